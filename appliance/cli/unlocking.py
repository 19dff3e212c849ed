"""Passphrase sources and the unlocked vault every command that needs keys runs under.

Sources, in order: `--passphrase-file`, `$APPLIANCE_PASSPHRASE_FILE`, a prompt when stdin is a
terminal. With none of them the vault stays locked (exit 4): a script never hangs on a hidden
prompt. A passphrase lives in a locked buffer that is zeroed once the vault has it.

Every command that unlocks the vault does it here (`killable_vault`), so every one is killable the
same way: the kill-switch is armed (pid lock, signals) before the vault is unlocked and disarmed
after its keys are zeroed; a kill the command did not handle itself (`ask` does, mid-reply) is
handled as it ends, wipe included, and it exits 4.
"""

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Optional

import click

from .. import paths, state
from ..emergency import handle_kill_in_new_session
from ..errors import NoPassphrase, UsageError
from ..hardening import lock_secret
from ..service import UnlockedAppliance
from ..store.bases import active_model, close_model
from ..trust.builtin import VerifiedModel
from ..vault import Vault, zeroize
from ..vault.kdf import WEAK_BITS, estimated_bits
from ..vault.killswitch import Killed, KillSwitch
from .output import LARGE_START, Shown, say, warn

PASSPHRASE_ENV = "APPLIANCE_PASSPHRASE_FILE"
MAX_PASSPHRASE_FILE = 4096


def passphrase_option(f):
    return click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"Read the passphrase from this file (default: ${PASSPHRASE_ENV}, else a prompt).",
    )(f)


def has_passphrase_source(path: Optional[Path]) -> bool:
    """A passphrase can be had without hanging: a file, $APPLIANCE_PASSPHRASE_FILE, or a terminal to type it on."""
    return bool(path or os.environ.get(PASSPHRASE_ENV) or sys.stdin.isatty())


def read_passphrase(
    path: Optional[Path], *, confirm: bool = False, prompt: str = "Passphrase", use_env: bool = True
) -> bytearray:
    """The passphrase in a locked buffer that the caller zeroizes once the vault has it."""
    source = path or (os.environ.get(PASSPHRASE_ENV) if use_env else None)
    if source:
        return _read_passphrase_file(Path(source))
    if not sys.stdin.isatty():
        raise NoPassphrase(
            f"the vault is locked and no passphrase was given: use --passphrase-file, ${PASSPHRASE_ENV}, or a terminal"
        )
    typed = bytearray(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True).encode())
    lock_secret(typed)
    return typed  # the prompt's own str cannot be zeroed (docs/procedures.md, section 9)


def _read_passphrase_file(source: Path) -> bytearray:
    """Read into a buffer that is zeroed, never copied into an immutable `bytes`.

    A file that other users may read or write is refused, as ssh refuses such a private key:
    reading it discloses the passphrase, writing it chooses the next one.
    """
    buf = bytearray(MAX_PASSPHRASE_FILE + 1)
    lock_secret(buf)
    try:
        n = _read_private_file(source, buf)
        if n > MAX_PASSPHRASE_FILE:
            raise NoPassphrase(f"the passphrase file {source} is longer than {MAX_PASSPHRASE_FILE} bytes")
        if n and buf[n - 1] == ord("\n"):  # one line ending ("\n", "\r\n" or "\r"), as an editor leaves it
            n -= 1
        if n and buf[n - 1] == ord("\r"):
            n -= 1
        if not n:
            raise NoPassphrase(f"the passphrase file {source} is empty")
        with memoryview(buf) as view:
            passphrase = bytearray(view[:n])
        lock_secret(passphrase)
        return passphrase
    finally:
        zeroize(buf)


def _read_private_file(source: Path, buf: bytearray) -> int:
    """Fill `buf` from `source` (the byte count); Locked if the file is not its owner's alone."""
    try:
        with open(source, "rb", buffering=0) as f, memoryview(buf) as view:
            st = os.fstat(f.fileno())
            if st.st_mode & 0o077:
                raise NoPassphrase(
                    f"the passphrase file {source} is open to other users (mode {st.st_mode & 0o777:03o}): `chmod 600 {source}`"
                )
            if st.st_uid not in (os.geteuid(), 0):
                raise NoPassphrase(f"the passphrase file {source} belongs to another user (uid {st.st_uid})")
            n = 0
            while n < len(buf) and (got := f.readinto(view[n:])):
                n += got
            return n
    except OSError as e:
        raise NoPassphrase(f"cannot read the passphrase file {source}: {e.strerror}") from None


def unlock(passphrase_file: Optional[Path]) -> Vault:
    """The vault, unlocked, for a caller that holds it past one command body (the chat hands it to its
    core): that caller has armed the kill-switch and zeroizes the keys."""
    home = paths.state_dir()
    state.require_initialised(home)
    Vault.require(home)  # no vault, or an erased one: say so before asking for a passphrase
    passphrase = read_passphrase(passphrase_file)
    try:
        vault = Vault.unlock(home, passphrase)
    finally:
        zeroize(passphrase)
    _show_generation(vault, passphrase_file)
    return vault


def _show_generation(vault: Vault, passphrase_file: Optional[Path]) -> None:
    """When the passphrase was typed, a person is there to compare the generation with the one noted."""
    if not (passphrase_file or os.environ.get(PASSPHRASE_ENV)):
        warn(generation_line(vault))


def generation_line(vault: Vault) -> str:
    """What the operator notes offline after each update or incident, and compares (docs/procedures.md, section 1)."""
    generation, written = vault.generation()
    return f"vault:   generation {generation}, written {written} (lower than the one you noted: an older copy was put back)"


@contextmanager
def killable_vault(passphrase_file: Optional[Path]) -> Iterator[tuple[Vault, KillSwitch]]:
    """The unlocked vault for the body of a command, with its armed kill-switch; keys zeroed however the body ends."""
    home = paths.state_dir()
    state.require_initialised(home)
    Vault.require(home)  # no vault, or an erased one: say so before asking for a passphrase
    with ExitStack() as held:  # left in reverse: the keys are zeroed before the pid lock goes
        passphrase = read_passphrase(passphrase_file)
        try:
            killswitch = held.enter_context(KillSwitch(home))  # before the keys exist: `kill` finds whoever holds them
            vault = held.enter_context(Vault.unlock(home, passphrase))
        finally:
            zeroize(passphrase)
        _show_generation(vault, passphrase_file)
        try:
            yield vault, killswitch
            killswitch.check()
        except BaseException as e:
            if not killswitch.cancel.is_set():
                raise
            killed = e if isinstance(e, Killed) else Killed(killswitch.wipe)
            if not killswitch.handled:  # e.g. an import, which has no safe points of its own
                killed.wiped = handle_kill_in_new_session(killed, killswitch, vault)
            for key_id in killed.wiped:
                warn(f"wiped: {key_id}")
            if killed is e:
                raise
            raise killed from e


@contextmanager
def unlocked(passphrase_file: Optional[Path]) -> Iterator[Vault]:
    """`killable_vault` for a command that needs only the vault."""
    with killable_vault(passphrase_file) as (vault, _):
        yield vault


def new_vault_passphrase(home: Path, passphrase_file: Optional[Path], if_needed: bool) -> Optional[bytearray]:
    """`init`'s vault step, asked before anything is created: the new passphrase, or None for no vault now.

    A live vault needs nothing. Non-interactive `init --if-needed` (what ./run calls) without a
    passphrase source skips the vault with a note; plain `init` then refuses (exit 2).
    """
    if Vault.state(home) == "present":
        return None
    if not has_passphrase_source(passphrase_file):
        if if_needed:
            warn("note: no vault yet; `appliance init` in a terminal (or with --passphrase-file) sets the passphrase")
            return None
        raise UsageError(f"init needs a passphrase: run it in a terminal, or give --passphrase-file / ${PASSPHRASE_ENV}")
    return read_passphrase(passphrase_file, confirm=True, prompt="New passphrase")


def warn_if_weak(passphrase: bytearray) -> None:
    """A warning line for a new passphrase below the strength rule (`kdf.estimated_bits`); it is still accepted."""
    bits = estimated_bits(passphrase)
    if bits < WEAK_BITS:
        warn(
            f"warning: this passphrase looks weak (about {bits:.0f} bits by its length and character classes, "
            f"under {WEAK_BITS}): five or more random words are stronger"
        )


def create_vault(home: Path, passphrase: bytearray) -> Vault:
    """The new vault, left unlocked for the caller (one key derivation); the caller zeroizes it.

    The passphrase is zeroed here, once the vault has it.
    """
    replacing = Vault.state(home) == "erased"
    try:
        warn_if_weak(passphrase)
        vault = Vault.create(home, passphrase)
    finally:
        zeroize(passphrase)
    say(f"vault:   created ({home / 'vault'})" + (", replacing the erased one" if replacing else ""))
    return vault


# -- the unlocked appliance that `ask` runs in (`service.UnlockedAppliance`) ------------


@contextmanager
def unlocked_appliance(passphrase_file: Optional[Path], model: Optional[VerifiedModel] = None) -> Iterator[UnlockedAppliance]:
    """The appliance on the unlocked vault, under the vault's kill-switch; a kill says what its wipe erased.

    Without `model`, the store's active base is opened and verified first (`store.bases.active_model`:
    an imported one decrypted into memory), before anything else happens; a large one shows its progress.
    """
    with killable_vault(passphrase_file) as (vault, killswitch):
        opened = model is None
        model = active_model(vault, steps=Shown(LARGE_START)) if model is None else model
        try:
            with UnlockedAppliance.open(vault, model, killswitch) as app:
                yield app
        finally:
            if opened:
                close_model(model)
