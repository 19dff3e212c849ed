"""The appliance's trust store: its own GnuPG home and `policy.json` (pinned signers, threshold).

Layout under the state directory:

    trust/            mode 0700
      gnupg/          mode 0700, the public keys of pinned signers (pubring.kbx)
      policy.json     {"format": "appliance-policy/1", "threshold": 2, "signers": [FPR, ...], "demo": [FPR, ...]}

Rules:

1. a key enters the keyring only if the file holds exactly one public key whose
   fingerprint is the one the operator typed (it reached them out of band);
2. only pinned fingerprints count, whatever else the keyring holds;
3. the threshold is at least 1 and defaults to 2 (dual control);
4. `policy.json` and the keyring are sealed state (`state_files`): only the appliance,
   unlocked by the passphrase, writes them; one changed outside it refuses everything
   (exit 3, naming the file), and so does a damaged one. gpg only ever sees a scratch
   copy of the keyring bytes that were checked;
5. keys pinned by `init --demo` are listed as demo keys, so everything that
   names a signer can say so.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import gnupg

from ..errors import NotFound, UsageError
from ..state_files import StateFileDamaged, StateSeal, read_sealed_state, state_bytes
from .signatures import (
    KEYRING,
    KeyFileRefused,
    check_signatures,
    key_summaries,
    normalise_fingerprint,
    require_threshold,
    scan_key_file,
    scratch_gpg,
)

TRUST_DIR = "trust"  # under the state dir
POLICY_FORMAT = "appliance-policy/1"
DEFAULT_THRESHOLD = 2
MAX_THRESHOLD = 16


@dataclass(frozen=True)
class Policy:
    signers: tuple[str, ...] = ()
    threshold: int = DEFAULT_THRESHOLD
    demo: tuple[str, ...] = ()  # pinned signers that are demo keys (their private halves were destroyed)

    def to_json(self) -> bytes:
        return state_bytes(
            {"format": POLICY_FORMAT, "threshold": self.threshold, "signers": sorted(self.signers), "demo": sorted(self.demo)}
        )


def _fingerprints(path: Path, field: str, values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        fprs = tuple(normalise_fingerprint(f) for f in values)
    except UsageError:
        raise StateFileDamaged(path, f"field {field!r} holds something that is not a fingerprint") from None
    if len(set(fprs)) != len(fprs):
        raise StateFileDamaged(path, f"field {field!r} lists a fingerprint twice")
    return fprs


def _parse_policy(path: Path, seal: StateSeal) -> Policy:
    doc = read_sealed_state(seal, path, POLICY_FORMAT)
    if doc is None:
        return Policy()
    signers = _fingerprints(path, "signers", doc.strings("signers"))
    demo = _fingerprints(path, "demo", doc.strings("demo", optional=True))
    threshold = doc.integer("threshold", 1)
    if threshold > MAX_THRESHOLD:
        raise StateFileDamaged(path, f"field 'threshold' is above {MAX_THRESHOLD}")
    if not set(demo) <= set(signers):
        raise StateFileDamaged(path, "field 'demo' names a signer that is not pinned")
    return Policy(signers, threshold, demo)


def demo_mark(fingerprint: str, demo) -> str:
    """The mark a demo key carries wherever a signer is shown: never let a demo pass for real trust."""
    return " [DEMO KEY]" if fingerprint in demo else ""


class TrustRoot:
    """The root of trust for bundles: the pinned signers' keyring and the policy (threshold, demo marks),
    read and written through the vault's seal (so only with the passphrase)."""

    def __init__(self, home: Path, seal: StateSeal):
        self.dir = home / TRUST_DIR
        self.keyring_path = self.dir / "gnupg" / KEYRING
        self.policy_path = self.dir / "policy.json"
        self._seal = seal

    def policy(self) -> Policy:
        return _parse_policy(self.policy_path, self._seal)

    def keyring(self) -> Optional[bytes]:
        """The pinned signers' public keyring as last written by the appliance (None before the first pin)."""
        return self._seal.read(self.keyring_path)

    def _save(self, policy: Policy) -> None:
        self._seal.write(self.policy_path, policy.to_json())

    def _change_keyring(self, change: Callable[[gnupg.GPG], None]) -> None:
        """Apply `change` to a scratch copy of the keyring, then seal the new keyring in."""
        with scratch_gpg(self.keyring()) as (gpg, _):
            change(gpg)
            keyring = Path(gpg.gnupghome, KEYRING).read_bytes()
        self._seal.write(self.keyring_path, keyring)

    def add(self, key_data: bytes, fingerprint: str, demo: bool = False) -> str:
        fpr = normalise_fingerprint(fingerprint)
        policy = self.policy()
        scan_key_file(key_data, fpr)

        def import_key(gpg: gnupg.GPG) -> None:
            result = gpg.import_keys(key_data)
            if fpr not in result.fingerprints:
                raise KeyFileRefused(f"gpg did not import key {fpr}: {result.summary()}")

        self._change_keyring(import_key)
        demo_keys = set(policy.demo) | {fpr} if demo else set(policy.demo) - {fpr}
        self._save(replace(policy, signers=tuple(sorted(set(policy.signers) | {fpr})), demo=tuple(sorted(demo_keys))))
        return fpr

    def remove(self, fingerprint: str) -> str:
        fpr = normalise_fingerprint(fingerprint)
        policy = self.policy()
        if fpr not in policy.signers:
            raise NotFound(f"{fpr} is not a pinned signer")
        self._save(
            replace(policy, signers=tuple(f for f in policy.signers if f != fpr), demo=tuple(f for f in policy.demo if f != fpr))
        )
        self._change_keyring(lambda gpg: gpg.delete_keys(fpr))
        return fpr

    def set_threshold(self, k: int) -> None:
        if not 1 <= k <= MAX_THRESHOLD:
            raise UsageError(f"the threshold must be between 1 and {MAX_THRESHOLD}")
        self._save(replace(self.policy(), threshold=k))

    def describe(self) -> dict[str, str]:
        """Pinned fingerprint -> the key's user id and expiry (or why it is missing)."""
        keys, policy = key_summaries(self.keyring()), self.policy()
        return {f: keys.get(f, "key missing from the keyring") + demo_mark(f, policy.demo) for f in policy.signers}

    def verified_signers(self, manifest_raw: bytes, signatures: dict[str, bytes]) -> tuple[str, ...]:
        """The pinned signers whose good signatures over `manifest_raw` reach the threshold, else `ThresholdNotMet`."""
        policy = self.policy()
        checks = check_signatures(manifest_raw, signatures, frozenset(policy.signers), self.keyring())
        return require_threshold(checks, policy.threshold)
