"""The import's trust decision, with no I/O: values in, the acceptance or the refusal out.

`decide` takes a manifest already admitted by its parser, the pinned signers whose signatures
counted (`trust.policy.TrustRoot.verified_signers`, the gpg step), the store's state (its items
and time floor) and the clock; it returns `Accepted` or raises the `Refused` subclass naming the
first rule broken. The effects around it (gpg, copying, encryption, the GGUF probe, the commit)
are `store.importer`'s. The rules, in order (docs/design.md, import steps 3 and 4):

1. expiry against the time floor: refused if `expires` is not after max(now, floor); a clock
   earlier than the floor is reported in the acceptance (was it set back?);
2. `created` is at most the clock tolerance after now (`trust.manifest.check_created`), since
   it becomes the floor;
3. an item keeps its kind;
4. the version is strictly above every version ever accepted for that name (rollback, replay);
5. what the kind asks of the manifest alone (`trust.kinds`): a base model is one GGUF plus
   text files (`bases.gguf_artifact`), checked before a byte is copied.

Out of scope: the signatures themselves and the threshold (judged before, at max(now, floor)),
and every rule on the artifacts' bytes.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from ..errors import Refused
from ..trust.kinds import KINDS
from ..trust.manifest import Manifest, check_created
from ..utc import format_time
from .bases import gguf_artifact
from .layout import StoreState


class ManifestExpired(Refused):
    pass


class VersionNotNewer(Refused):
    pass


class KindChanged(Refused):
    pass


@dataclass(frozen=True)
class Accepted:
    manifest: Manifest
    signers: tuple[str, ...]
    clock_note: str  # "" or why the clock looks wrong


def check_expiry(manifest: Manifest, now: datetime, floor: Optional[datetime]) -> str:
    """Rule 1; returns a note when the clock is earlier than the floor (it was set back, or is wrong)."""
    effective = now if floor is None else max(now, floor)
    clock_behind = effective != now
    note = ""
    if clock_behind:
        note = f"the clock ({format_time(now)}) is earlier than the time floor ({format_time(effective)}): was it set back?"
    if manifest.expires <= effective:
        against = "the time floor" if clock_behind else "now"
        raise ManifestExpired(
            f"{manifest.name} v{manifest.version}: manifest expired at {format_time(manifest.expires)}, "
            f"before {against} ({format_time(effective)}){'; ' + note if note else ''}"
        )
    return note


def check_kind(manifest: Manifest, state: StoreState) -> None:
    """Rule 3."""
    item = state.items.get(manifest.name)
    if item is not None and item.kind != manifest.kind:
        raise KindChanged(f"{manifest.name} is installed as a {item.kind}, this bundle is a {manifest.kind}")


def check_version(manifest: Manifest, state: StoreState) -> None:
    """Rule 4."""
    item = state.items.get(manifest.name)
    if item is not None and manifest.version <= item.max_version:
        what = "the same version again (replay)" if manifest.version == item.max_version else "an older version (rollback)"
        raise VersionNotNewer(f"{manifest.name} v{manifest.version} is {what}: a bundle must be above v{item.max_version}")


def check_kind_rules(manifest: Manifest) -> None:
    """Rule 5."""
    if KINDS[manifest.kind].probed:
        gguf_artifact(manifest)


def decide(manifest: Manifest, signers: tuple[str, ...], state: StoreState, now: datetime) -> Accepted:
    """Rules 1-5 in order: the acceptance, or the first refusal raised."""
    note = check_expiry(manifest, now, state.floor)
    check_created(manifest, now)
    check_kind(manifest, state)
    check_version(manifest, state)
    check_kind_rules(manifest)
    return Accepted(manifest, signers, note)
