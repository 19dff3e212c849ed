"""A rollback changes which version of an item is active, never which overlay or control vector is selected."""

import pytest
from bundles import make_bundle, make_control_bundle

from appliance.store import ActiveBase
from appliance.store.importer import import_bundle, rollback
from appliance.store.layout import Store
from appliance.trust.builtin import embedded_pin, verify_pinned


@pytest.fixture(scope="module")
def base():
    return ActiveBase(verify_pinned(embedded_pin()), hidden_size=576, n_layer=30)


@pytest.mark.parametrize("kind", ["overlay", "control-vector"])
def test_rollback_of_an_item_not_selected_leaves_the_selection(kind, home, keys, base, vault, tmp_path):
    make = make_bundle if kind == "overlay" else make_control_bundle
    for name, version in (("older", 1), ("older", 2), ("chosen", 1)):  # `chosen`, imported last, is the selected one
        import_bundle(make(keys, tmp_path / f"{name}-{version}.bundle", name=name, version=version, seed=version), base, vault)
    store = Store.unlocked(vault)
    before = store.read_state()
    assert rollback("older", base, vault) == (2, 1)
    after = store.read_state()
    assert (after.overlay, after.control) == (before.overlay, before.control)
    assert "chosen" in (after.overlay, after.control)
    older = after.items["older"]
    assert store.read_manifest(older.active).version == 1  # the rollback itself happened
