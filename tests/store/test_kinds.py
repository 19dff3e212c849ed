"""The kind registry (`appliance.trust.kinds`) is the one table of kinds: the schema and the CLI agree with it."""

import json

import pytest

from appliance.cli.trust_commands import bundle_create
from appliance.trust.kinds import ENCRYPTED, KINDS
from appliance.trust.manifest import SCHEMA_PATH

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`


def test_the_schema_enum_is_the_registry():
    schema = json.loads(SCHEMA_PATH.read_text())
    assert sorted(schema["properties"]["kind"]["enum"]) == sorted(KINDS)


def test_each_encrypted_kind_has_its_own_keys_and_kill_record_field():
    prefixes = [kind.keys for kind in ENCRYPTED]
    # No prefix begins another: erasing one kind's keys by prefix never takes another kind's.
    assert all(not a.startswith(b) for a in prefixes for b in prefixes if a is not b)
    fields = [kind.kill_field for kind in ENCRYPTED]
    assert all(fields) and len(set(fields)) == len(fields)


def test_a_bound_kind_names_the_two_files_its_loader_takes():
    bound = [kind for kind in KINDS.values() if kind.binds_base]
    assert bound and all(len(kind.files) == 2 for kind in bound)
    selected = [kind.selected_as for kind in KINDS.values() if kind.selected_as]
    assert sorted(selected) == ["control", "overlay"]  # the store state's two selection fields


def test_bundle_create_offers_every_kind_but_the_image():
    kind_option = next(p for p in bundle_create.params if p.name == "kind")
    assert set(kind_option.type.choices) == set(KINDS) - {"image"}  # an image is packed by `image pack`
