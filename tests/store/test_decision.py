"""The import's trust decision as a function (`appliance.store.decision.decide`): values in, verdict out,
no gpg, no disk, no clock. Each row is one case of rules 1-5; the CLI's refusals (tests/trust) prove the wiring."""

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from appliance.store.bases import BaseBundleInvalid
from appliance.store.decision import Accepted, KindChanged, ManifestExpired, VersionNotNewer, decide
from appliance.store.layout import Item, StoreState
from appliance.trust.manifest import Manifest, ManifestFromFuture, parse_manifest
from appliance.utc import CLOCK_TOLERANCE, format_time

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)
SIGNERS = ("A" * 40, "B" * 40)
FILES = {"overlay": ("overlay.json", "overlay.safetensors"), "control-vector": ("control.json", "control.safetensors"),
         "base-model": ("model.gguf",)}  # fmt: skip


def manifest(kind="overlay", name="care", version=2, created=-30 * DAY, expires=DAY * 90, files=None) -> Manifest:
    """A manifest admitted by the real parser; times relative to NOW."""
    paths = FILES[kind] if files is None else files
    doc = {"schema": "appliance-manifest/1", "kind": kind, "name": name, "version": version,
           "created": format_time(NOW + created), "expires": format_time(NOW + expires),
           "artifacts": [{"path": p, "sha256": "a" * 64, "size": 1} for p in paths]}  # fmt: skip
    if kind in ("overlay", "control-vector"):
        doc["binds"] = {"base_model_sha256": "b" * 64}
    return parse_manifest(json.dumps(doc).encode())


def state(floor=None, **items: tuple[str, int]) -> StoreState:
    """items: name -> (kind, the highest version ever accepted)."""
    return StoreState(floor, items={n: Item(k, "c" * 64, ("c" * 64,), v) for n, (k, v) in items.items()})


FLOOR_AHEAD = NOW + 10 * DAY  # the clock was set back ten days

CASES = [
    # (id, manifest, store state, now, the refusal or None, a clock note expected)
    ("fresh", manifest(), state(), NOW, None, False),
    ("next-version", manifest(version=2), state(care=("overlay", 1)), NOW, None, False),
    ("expired", manifest(expires=-DAY), state(), NOW, ManifestExpired, False),
    ("expires-now", manifest(expires=timedelta(0)), state(), NOW, ManifestExpired, False),
    ("expired-at-the-floor", manifest(expires=5 * DAY), state(FLOOR_AHEAD), NOW, ManifestExpired, False),
    ("clock-behind-floor", manifest(expires=30 * DAY), state(FLOOR_AHEAD), NOW, None, True),
    ("created-within-tolerance", manifest(created=CLOCK_TOLERANCE), state(), NOW, None, False),
    ("created-in-the-future", manifest(created=CLOCK_TOLERANCE + timedelta(seconds=1)), state(), NOW, ManifestFromFuture, False),
    ("replay", manifest(version=1), state(care=("overlay", 1)), NOW, VersionNotNewer, False),
    ("rollback", manifest(version=1), state(care=("overlay", 3)), NOW, VersionNotNewer, False),
    ("kind-changed", manifest(kind="control-vector", version=5), state(care=("overlay", 1)), NOW, KindChanged, False),
    ("other-name-unaffected", manifest(version=1), state(other=("overlay", 9)), NOW, None, False),
    ("control-vector", manifest(kind="control-vector"), state(), NOW, None, False),
    ("base-one-gguf", manifest(kind="base-model", name="gemma", files=("model.gguf", "LICENSE.txt")), state(), NOW, None, False),
    ("base-two-ggufs", manifest(kind="base-model", name="gemma", files=("a.gguf", "b.gguf")), state(), NOW, BaseBundleInvalid, False),
    ("base-named-embedded", manifest(kind="base-model", name="embedded"), state(), NOW, BaseBundleInvalid, False),
    # The first rule broken is the one reported: expiry comes before the version.
    ("expired-and-replayed", manifest(version=1, expires=-DAY), state(care=("overlay", 1)), NOW, ManifestExpired, False),
]  # fmt: skip


# What the one line tells the operator, for some of the rows.
WORDS = {"expired": "care v2: manifest expired at", "expired-at-the-floor": "before the time floor",
         "replay": "same version again (replay)", "rollback": "older version (rollback): a bundle must be above v3",
         "kind-changed": "care is installed as a overlay, this bundle is a control-vector"}  # fmt: skip


@pytest.mark.parametrize("case, m, st, now, refusal, note", CASES, ids=[c[0] for c in CASES])
def test_decide(case, m, st, now, refusal, note):
    if refusal is not None:
        with pytest.raises(refusal, match=re.escape(WORDS[case]) if case in WORDS else None):
            decide(m, SIGNERS, st, now)
        return
    accepted = decide(m, SIGNERS, st, now)
    assert accepted == Accepted(m, SIGNERS, accepted.clock_note)
    assert bool(accepted.clock_note) == note
    if note:
        assert "was it set back?" in accepted.clock_note
