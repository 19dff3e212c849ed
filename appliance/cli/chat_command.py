"""`appliance chat`: the terminal UI on the verified base (and the active overlay, re-verified at unlock).

The active base is named in the sealed store, and an imported one is encrypted: so the passphrase
comes first, from `--passphrase-file`, $APPLIANCE_PASSPHRASE_FILE or a prompt on the terminal before
the UI starts, and the base is verified (decrypted into memory) before llama.cpp opens it; the vault
is then unlocked at start. The unlock screen stays the way back in after a kill, which always asks
for the passphrase typed again, and is where a first run creates the vault.
"""

import os
import sys
from pathlib import Path
from typing import Optional

import click

from .. import paths, state
from ..runtime.sampler import SamplingSettings
from ..runtime.session import Runtime
from ..store.bases import active_model, close_model
from ..trust.builtin import VerifiedModel, embedded_pin, verify_pinned
from ..vault import Vault, zeroize
from ..vault.killswitch import KillSwitch
from .options import FiniteFloatRange, resume_option
from .unlocking import PASSPHRASE_ENV, passphrase_option, read_passphrase


@click.command()
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=512, show_default=True, help="Per reply.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--temperature", type=FiniteFloatRange(0.0, 5.0), default=0.7, show_default=True, help="0 is greedy.")
@click.option("--system", "system_prompt", default=None, help="System prompt of the first session (editable in the UI).")
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="llama.cpp threads (default: every core, one fewer for each core other processes keep busy).",
)
@resume_option
@passphrase_option
def chat(
    max_tokens: int,
    seed: int,
    temperature: float,
    system_prompt: Optional[str],
    threads: Optional[int],
    resume: Optional[str],
    passphrase_file: Optional[Path],
) -> None:
    """The terminal UI: unlock, chat with streaming replies, switch the overlay, audit, read and verify sessions, kill."""
    from ..ui import ApplianceApp, ChatCore  # Textual loads only for this command

    if resume and system_prompt is not None:
        raise click.UsageError("--system and --resume: a resumed session keeps the system prompt it recorded (F6 changes it)")
    home = paths.state_dir()
    state.require_initialised(home)
    # Which base is active is sealed in the store: with a passphrase (a file, or typed on the terminal
    # before the UI starts) the vault is opened once to verify it, an imported one decrypted into memory.
    # Without any source the chat runs on the embedded default and its unlock screen asks.
    given = passphrase_file or os.environ.get(PASSPHRASE_ENV)
    passphrase = read_passphrase(passphrase_file) if given or (sys.stdin.isatty() and Vault.state(home) == "present") else None
    try:
        model = verify_pinned(embedded_pin()) if passphrase is None else _active_model(home, passphrase)
        runtime = Runtime(model, n_threads=threads)
    except BaseException:
        if passphrase is not None:
            zeroize(passphrase)
        raise
    core = ChatCore(
        home,
        model,
        runtime,
        settings=SamplingSettings(temperature=temperature, seed=seed),
        max_tokens=max_tokens,
        system_prompt=system_prompt,
        resume=resume,
    )
    try:
        ApplianceApp(core, passphrase=passphrase).run()
    finally:
        core.close()
        runtime.close()
        if passphrase is not None:
            zeroize(passphrase)  # normally already zeroed by the unlock screen; not if it never tried
        close_model(model)


def _active_model(home: Path, passphrase: bytearray) -> VerifiedModel:
    if Vault.state(home) != "present":  # a first run: the unlock screen creates the vault; nothing is imported yet
        return verify_pinned(embedded_pin())
    with KillSwitch(home), Vault.unlock(home, passphrase) as vault:  # found by `kill`, as every command that unlocks is
        return active_model(vault)
