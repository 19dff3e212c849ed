"""The appliance's trust store: its own GnuPG home and `policy.json` (pinned signers, threshold).

Layout under the state directory:

    trust/            mode 0700
      gnupg/          mode 0700, the public keys of pinned signers (pubring.kbx)
      policy.json     {"format": "appliance-policy/1", "threshold": 2, "signers": [FPR, ...], "demo": [FPR, ...],
                       "scopes": {FPR: {"items": ["overlay/field-manual-demo", ...]}, ...}}

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
   names a signer can say so;
6. a signer with a scope counts only for the items (`kind/name`) it lists; every demo
   signer has one, its demo items (a demo signer without one, pinned before scopes
   existed, counts for nothing), so the demo keys can admit nothing but the demo;
7. demo signers and production trust never share a policy: while a demo signer is
   pinned, pinning a production signer or changing the threshold is refused
   (`DemoSignersPinned`: `trust remove-demo` first), and a demo signer is not pinned
   beside a production one (`ProductionSignersPinned`).
"""

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Optional

import gnupg

from ..errors import NotFound, Refused, UsageError
from ..state_files import StateFileDamaged, StateSeal, read_sealed_state, state_bytes
from ..utc import now
from .manifest import Manifest
from .signatures import (
    KEYRING,
    KeyFileRefused,
    check_signatures,
    judgement_time,
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


class DemoSignersPinned(Refused):
    pass


class ProductionSignersPinned(Refused):
    pass


def item_id(kind: str, name: str) -> str:
    """How a scope names an item: `kind/name` (neither holds a `/`, by the manifest's schema)."""
    return f"{kind}/{name}"


@dataclass(frozen=True)
class Policy:
    signers: tuple[str, ...] = ()
    threshold: int = DEFAULT_THRESHOLD
    demo: tuple[str, ...] = ()  # pinned signers that are demo keys (their private halves were destroyed)
    scopes: Mapping[str, frozenset[str]] = field(default_factory=dict)  # signer -> the only items it counts for

    def to_json(self) -> bytes:
        return state_bytes(
            {"format": POLICY_FORMAT, "threshold": self.threshold, "signers": sorted(self.signers), "demo": sorted(self.demo),
             "scopes": {f: {"items": sorted(items)} for f, items in self.scopes.items()}}
        )  # fmt: skip

    @property
    def production(self) -> tuple[str, ...]:
        return tuple(f for f in self.signers if f not in self.demo)

    def scope(self, signer: str) -> Optional[frozenset[str]]:
        """Rule 6: the items `signer` counts for; None: any."""
        if signer in self.scopes:
            return self.scopes[signer]
        return frozenset() if signer in self.demo else None

    def refuses(self, signer: str, kind: str, name: str) -> str:
        """Rules 2 and 6: why a good signature by `signer` does not count for item `kind/name`, or ""."""
        if signer not in self.signers:
            return "signer is not pinned in the policy"
        scope = self.scope(signer)
        if scope is not None and item_id(kind, name) not in scope:
            return f"a demo signer: {self.scope_text(signer)}"
        return ""

    def scope_text(self, signer: str) -> str:
        scope = self.scope(signer)
        return "" if scope is None else f"counts only for {', '.join(sorted(scope)) or 'nothing'}"

    def without(self, fingerprints: Collection[str]) -> "Policy":
        return replace(
            self,
            signers=tuple(f for f in self.signers if f not in fingerprints),
            demo=tuple(f for f in self.demo if f not in fingerprints),
            scopes={f: items for f, items in self.scopes.items() if f not in fingerprints},
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
    scoped = doc.objects("scopes") if doc.has("scopes") else {}
    scopes = dict(zip(_fingerprints(path, "scopes", tuple(scoped)), (frozenset(s.strings("items")) for s in scoped.values())))
    if not set(scopes) <= set(signers):
        raise StateFileDamaged(path, "field 'scopes' names a signer that is not pinned")
    return Policy(signers, threshold, demo, scopes)


def demo_mark(fingerprint: str, demo) -> str:
    """The mark a demo key carries wherever a signer is shown: never let a demo pass for real trust."""
    return " [DEMO KEY]" if fingerprint in demo else ""


def _demo_text(policy: Policy, signer: str) -> str:
    """A demo key's mark and scope (rules 5 and 6), for a line that names the signer."""
    return f"{demo_mark(signer, policy.demo)}; {policy.scope_text(signer)}" if signer in policy.demo else ""


def _no_demo_signers(policy: Policy) -> None:
    """Rule 7, before a production change: a threshold or a signer set while the demo keys count would pass for production trust."""
    if policy.demo:
        raise DemoSignersPinned(
            f"demo signers are pinned ({', '.join(policy.demo)}): remove them first (appliance trust remove-demo)"
        )


def _no_production_signers(policy: Policy) -> None:
    """Rule 7, before pinning a demo signer."""
    if policy.production:
        raise ProductionSignersPinned(
            f"production signers are pinned ({', '.join(policy.production)}): no demo signer joins them"
        )


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

    def add(self, key_data: bytes, fingerprint: str, scope: Optional[Collection[str]] = None) -> str:
        """Pin a signer (rules 1 and 7); with a `scope` (items named by `item_id`), a demo signer that counts only for those."""
        fpr = normalise_fingerprint(fingerprint)
        policy = self.policy()
        if scope is None:
            _no_demo_signers(policy)
        else:
            _no_production_signers(policy)
        scan_key_file(key_data, fpr)

        def import_key(gpg: gnupg.GPG) -> None:
            result = gpg.import_keys(key_data)
            if fpr not in result.fingerprints:
                raise KeyFileRefused(f"gpg did not import key {fpr}: {result.summary()}")

        self._change_keyring(import_key)
        pinned = replace(policy.without({fpr}), signers=tuple(sorted(set(policy.signers) | {fpr})))
        if scope is not None:
            pinned = replace(pinned, demo=tuple(sorted({*pinned.demo, fpr})), scopes={**pinned.scopes, fpr: frozenset(scope)})
        self._save(pinned)
        return fpr

    def remove(self, fingerprints: Collection[str]) -> tuple[str, ...]:
        """Unpin the signers and drop their keys; all of them or, when one is not pinned, none."""
        fprs = tuple(normalise_fingerprint(f) for f in fingerprints)
        policy = self.policy()
        for fpr in fprs:
            if fpr not in policy.signers:
                raise NotFound(f"{fpr} is not a pinned signer")
        self._save(policy.without(fprs))
        self._change_keyring(lambda gpg: gpg.delete_keys(list(fprs)))
        return fprs

    def set_threshold(self, k: int) -> None:
        if not 1 <= k <= MAX_THRESHOLD:
            raise UsageError(f"the threshold must be between 1 and {MAX_THRESHOLD}")
        policy = self.policy()
        _no_demo_signers(policy)
        self._save(replace(policy, threshold=k))

    def describe(self) -> dict[str, str]:
        """Pinned fingerprint -> the key's user id and expiry (or why it is missing), and a demo key's mark and scope."""
        keys, policy = key_summaries(self.keyring()), self.policy()
        return {f: keys.get(f, "key missing from the keyring") + _demo_text(policy, f) for f in policy.signers}

    def verified_signers(self, manifest: Manifest, signatures: dict[str, bytes], floor: Optional[datetime]) -> tuple[str, ...]:
        """The pinned signers whose good signatures over the manifest's bytes, judged at max(now, `floor`), count for
        its kind and name and reach the threshold; else `ThresholdNotMet` (or `ClockBehindFloor`)."""
        policy = self.policy()
        at = judgement_time(now(), floor)
        checks = check_signatures(
            manifest.raw, signatures, self.keyring(), at, lambda signer: policy.refuses(signer, manifest.kind, manifest.name)
        )
        return require_threshold(checks, policy.threshold)
