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
4. `policy.json` is replaced atomically, and a damaged one refuses everything;
5. keys pinned by `init --demo` are listed as demo keys, so everything that
   names a signer can say so.
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import gnupg

from ..errors import NotFound, Refused, UsageError
from ..fsutil import atomic_write
from .signatures import (
    KEYRING,
    check_signatures,
    key_summaries,
    normalise_fingerprint,
    require_threshold,
    scan_key_file,
    scratch_gpg,
)

POLICY_FORMAT = "appliance-policy/1"
DEFAULT_THRESHOLD = 2


class PolicyDamaged(Refused):
    pass


@dataclass(frozen=True)
class Policy:
    signers: tuple[str, ...] = ()
    threshold: int = DEFAULT_THRESHOLD
    demo: tuple[str, ...] = ()  # pinned signers that are demo keys (their private halves were destroyed)

    def to_json(self) -> bytes:
        doc = {"format": POLICY_FORMAT, "threshold": self.threshold, "signers": sorted(self.signers), "demo": sorted(self.demo)}
        return (json.dumps(doc, indent=2) + "\n").encode()


def _parse_policy(data: bytes) -> Policy:
    try:
        doc = json.loads(data)
        assert doc["format"] == POLICY_FORMAT
        signers = tuple(normalise_fingerprint(f) for f in doc["signers"])
        threshold = doc["threshold"]
        demo = tuple(normalise_fingerprint(f) for f in doc.get("demo", []))
        assert type(threshold) is int and threshold >= 1 and len(set(signers)) == len(signers)
        assert set(demo) <= set(signers)
    except Exception:  # any damage at all: refuse rather than guess
        raise PolicyDamaged("trust/policy.json is damaged: restore it or re-pin the signers") from None
    return Policy(signers, threshold, demo)


def demo_mark(fingerprint: str, demo) -> str:
    """The mark a demo key carries wherever a signer is shown: never let a demo pass for real trust."""
    return " [DEMO KEY]" if fingerprint in demo else ""


class TrustStore:
    def __init__(self, home: Path):
        self.dir = home / "trust"
        self.gnupghome = self.dir / "gnupg"
        self.policy_path = self.dir / "policy.json"

    def policy(self) -> Policy:
        return _parse_policy(self.policy_path.read_bytes()) if self.policy_path.is_file() else Policy()

    def _save(self, policy: Policy) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        atomic_write(self.policy_path, policy.to_json())

    def _change_keyring(self, change: Callable[[gnupg.GPG], None]) -> None:
        """Apply `change` to a scratch copy of the keyring, then swap the new keyring in atomically."""
        with scratch_gpg(self.gnupghome) as (gpg, _):
            change(gpg)
            keyring = Path(gpg.gnupghome, KEYRING).read_bytes()
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.gnupghome.mkdir(mode=0o700, exist_ok=True)
        atomic_write(self.gnupghome / KEYRING, keyring)

    def add(self, key_data: bytes, fingerprint: str, demo: bool = False) -> str:
        fpr = normalise_fingerprint(fingerprint)
        policy = self.policy()
        scan_key_file(key_data, fpr)

        def import_key(gpg: gnupg.GPG) -> None:
            result = gpg.import_keys(key_data)
            if fpr not in result.fingerprints:
                raise Refused(f"gpg did not import key {fpr}: {result.summary()}")

        self._change_keyring(import_key)
        demo_keys = set(policy.demo) | {fpr} if demo else set(policy.demo) - {fpr}
        self._save(replace(policy, signers=tuple(sorted(set(policy.signers) | {fpr})), demo=tuple(sorted(demo_keys))))
        return fpr

    def remove(self, fingerprint: str) -> str:
        fpr = normalise_fingerprint(fingerprint)
        policy = self.policy()
        if fpr not in policy.signers:
            raise NotFound(f"{fpr} is not a pinned signer")
        self._save(replace(policy, signers=tuple(f for f in policy.signers if f != fpr), demo=tuple(f for f in policy.demo if f != fpr)))
        self._change_keyring(lambda gpg: gpg.delete_keys(fpr))
        return fpr

    def set_threshold(self, k: int) -> None:
        if k < 1:
            raise UsageError("the threshold must be at least 1")
        self._save(replace(self.policy(), threshold=k))

    def describe(self) -> dict[str, str]:
        """Pinned fingerprint -> the key's user id and expiry (or why it is missing)."""
        keys, policy = key_summaries(self.gnupghome), self.policy()
        return {
            f: keys.get(f, "key missing from the keyring") + demo_mark(f, policy.demo)
            for f in policy.signers
        }

    def verified_signers(self, manifest_raw: bytes, signatures: dict[str, bytes]) -> tuple[str, ...]:
        """The pinned signers whose good signatures over `manifest_raw` reach the threshold, else `Refused`."""
        policy = self.policy()
        checks = check_signatures(manifest_raw, signatures, frozenset(policy.signers), self.gnupghome)
        return require_threshold(checks, policy.threshold)
