"""`init`'s steps, for `appliance init` and for a first `appliance chat`: the vault they open stays open.

In order: the state directory must be one (before any prompt); the new passphrase, typed twice; the
embedded model verified, once, when the state directory is new; the state directory and the vault
made all or nothing (`state.initialising`); the demo items when asked. The vault created (or, for
the demo, unlocked) is handed back to the caller, which zeroizes it: `init` at once, the chat when
it locks. So a first chat asks for the passphrase twice (set and confirm) and never a third time.
"""

from pathlib import Path
from typing import Optional

from .. import state
from ..store import ActiveBase
from ..store.layout import Store
from ..trust.builtin import VerifiedModel, embedded_pin, verify_pinned
from ..vault import Vault, zeroize
from ..vault.killswitch import KillSwitch
from .output import say, warn
from .unlocking import create_vault, new_vault_passphrase, unlock


def initialise(home: Path, passphrase_file: Optional[Path], *, if_needed: bool, demo: bool) -> Optional[Vault]:
    """The vault these steps opened (created, or unlocked for the demo), for the caller to zeroize; else None."""
    state.require_directory(home)  # before asking for a passphrase
    new_passphrase = new_vault_passphrase(home, passphrase_file, if_needed)
    fresh = not state.is_initialised(home)
    model = None
    vault = None
    try:
        if fresh:  # the model is hashed once, and only when something here needs it
            model = verify_pinned(embedded_pin())
            say(f"base model: {model.name} sha256 {model.sha256} (verified against the built-in manifest)")
        with state.initialising(home):  # all or nothing: "initialised" is written last
            if new_passphrase is not None:
                vault, new_passphrase = create_vault(home, new_passphrase), None  # create_vault zeroes it
            elif fresh and Vault.state(home) == "present":
                say(f"vault:   kept the one already there ({home / 'vault'})")
        if fresh:
            say(f"initialised {home}")
        elif not if_needed:
            say(f"already initialised: {home}")
        if demo:
            with KillSwitch(home) as killswitch:  # `kill` finds the install; one it cannot confirm meets its floor
                vault = vault or unlock(passphrase_file)
                _install_demo(model, vault)
                killswitch.check()
    except BaseException:
        if new_passphrase is not None:
            zeroize(new_passphrase)
        if vault is not None:
            vault.zeroize()
        raise
    return vault


def _install_demo(model: Optional[VerifiedModel], vault: Vault) -> None:
    """The demo items not installed yet; `model`: the embedded base if `initialise` verified it already."""
    from ..demo.install import DEMO_ITEMS, install_demo, production_pinned

    installed = Store.unlocked(vault).read_state().items
    missing = tuple(item for item in DEMO_ITEMS if item.name not in installed)
    for item in DEMO_ITEMS:
        if item.name in installed:
            say(f"demo:    {item.name} already installed")
    if not missing:
        return
    production = production_pinned(vault)
    if production:  # `./run chat` asks for the demo on every start: a production appliance just goes on
        say(f"demo:    not installed: production signers are pinned ({', '.join(production)}), no demo signer joins them")
        return
    model = model or verify_pinned(embedded_pin())  # the base the demo items are bound to, checked as for any load
    demo = install_demo(ActiveBase(model), vault, missing)
    names = ", ".join(f"{item.kind} {item.name} v{item.version}" for item in missing)
    say(f"demo:    installed {names}, signed by demo keys {', '.join(demo.signers)} (private halves destroyed)")
    say("demo:    the demo signers admit only these items; `appliance trust remove-demo` before production trust")
    if demo.storage_note:
        warn(f"warning: {demo.storage_note}")
