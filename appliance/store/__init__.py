"""The store of installed bundles: atomic import, operator rollback, re-verified loads.

Layout under the state directory:

    store/
      state.json                  the commit point, replaced atomically:
                                  {"format", "floor", "overlay": active overlay name,
                                   "control": active control vector name (beside the overlay),
                                   "base": active imported base name (null: the embedded default),
                                   "overlay_of_base": {base name or "embedded": {"overlay": its last overlay}},
                                   "items": {name: {"kind", "active", "installed", "max_version", "erased"}}}
      objects/<manifest sha256>/  content-addressed, one per accepted manifest:
        manifest.json             the exact signed bytes
        signatures/<FPR>.asc      as they came in the bundle
        accepted.json             the pinned signers that counted, and when; a base's GGUF shape
                                  (`gguf_shape`: what its start's memory check needs, read at import)
        artifacts/<path>          the bytes that were hashed on the way in, encrypted
                                  under the version's vault data key (`at_rest`), overlays,
                                  control vectors and base models alike
    .staging-<random>/            exists only while an import runs

An import writes nothing but its staging directory until every check has
passed; then it renames staging into `objects/` and replaces `state.json`.
Killed at any point, the active versions are the old ones or the new ones;
leftover staging directories and unreferenced objects are removed by the next
successful import. Crypto-erase of an overlay, a control vector or a base (`appliance.erase`) destroys its keys
in the vault, then marks its versions erased here (`forget`). Which base is active, and how an
imported one is opened for llama.cpp: `bases`.
"""

from .active import (
    ActiveBase,
    ActiveItem,
    InstallRecord,
    describe_installed,
    embedded_base,
    load_active,
    verify_installed,
)
from .forget import forget_items
from .importer import import_bundle, rollback, verify_bundle

__all__ = [
    "ActiveBase",
    "ActiveItem",
    "embedded_base",
    "forget_items",
    "InstallRecord",
    "describe_installed",
    "import_bundle",
    "load_active",
    "rollback",
    "verify_bundle",
    "verify_installed",
]
