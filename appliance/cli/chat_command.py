"""`appliance chat`: the terminal UI on the verified base (and the active overlay, re-verified at unlock).

The passphrase is asked at the shell, before the UI starts and before llama.cpp loads anything:
which base is active is sealed in the store, and an imported one is encrypted, so the vault must be
open to know what to load. First run (no vault yet, or an erased one): `init`'s steps
(`first_run.py`), the new passphrase typed twice, and `--demo` installs the demo items; later runs:
the passphrase once. Either way the one vault this opens is handed to the chat, which starts
unlocked: one prompt path, one key derivation, no passphrase carried into the UI. The UI's unlock
screen is the way back in after a kill (the passphrase typed again) and, without any passphrase
source (no terminal, no file), where the vault is unlocked or created.
"""

from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import click

from .. import paths, state
from ..progress import Steps
from ..runtime.engine_settings import GpuRequest
from ..runtime.sampler import SamplingSettings
from ..runtime.session import Runtime
from ..store.bases import active_model, close_model, verify_embedded
from ..vault import Vault
from ..vault.killswitch import KillSwitch
from .first_run import initialise
from .options import FiniteFloatRange, engine_settings, gpu_layers_option, resume_option
from .unlocking import has_passphrase_source, passphrase_option, unlock


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
@click.option(
    "--demo",
    is_flag=True,
    help="On a first run (no vault yet): also install the demo overlay and control vector, as `init --demo`.",
)
@gpu_layers_option
@resume_option
@passphrase_option
def chat(
    max_tokens: int,
    seed: int,
    temperature: float,
    system_prompt: Optional[str],
    threads: Optional[int],
    demo: bool,
    gpu_layers: Optional[GpuRequest],
    resume: Optional[str],
    passphrase_file: Optional[Path],
) -> None:
    """The terminal UI: unlock, chat with streaming replies, switch the overlay, audit, read and verify sessions, kill."""
    from ..ui import ApplianceApp, ChatCore  # Textual loads only for this command

    if resume and system_prompt is not None:
        raise click.UsageError("--system and --resume: a resumed session keeps the system prompt it recorded (F6 changes it)")
    home = paths.state_dir()
    with ExitStack() as cleanup:  # undone in reverse order, however the chat ends
        opened = _open_vault(home, passphrase_file, demo, cleanup)

        def load(steps: Steps) -> ChatCore:
            """On the loading screen's worker thread: the base verified and loaded, then the chat's core."""
            model = verify_embedded(steps) if opened is None else active_model(opened[0], steps=steps)
            cleanup.callback(close_model, model)
            with steps.step(f"loading {model.name} into llama.cpp", None):
                runtime = Runtime(model, engine_settings(opened and opened[0], gpu_layers, model.path, n_threads=threads))
            cleanup.callback(runtime.close)
            core = ChatCore(
                home,
                model,
                runtime,
                settings=SamplingSettings(temperature=temperature, seed=seed),
                max_tokens=max_tokens,
                system_prompt=system_prompt,
                resume=resume,
            )
            cleanup.callback(core.close)
            if opened is not None:
                core.start(*opened)  # the chat opens unlocked, on the vault and kill-switch the shell opened
            return core

        app = ApplianceApp(load)
        app.run()
        if app.load_error is not None:
            raise app.load_error


def _open_vault(home: Path, passphrase_file: Optional[Path], demo: bool, held: ExitStack) -> Optional[tuple[Vault, KillSwitch]]:
    """The vault, open, for the chat to start in, with the kill-switch armed before the base is opened (`kill`
    finds the chat from here); None without any passphrase source (the unlock screen asks). Both are `held`'s
    to undo until the core takes them (twice is harmless)."""
    if not has_passphrase_source(passphrase_file):
        state.require_initialised(home)
        return None
    vault = None
    if not state.is_initialised(home) or Vault.state(home) != "present":
        vault = initialise(home, passphrase_file, if_needed=True, demo=demo)  # set once, typed twice: it stays open
        if vault is not None:
            held.callback(vault.zeroize)
    killswitch = held.enter_context(KillSwitch(home))
    if vault is None:
        vault = unlock(passphrase_file)
        held.callback(vault.zeroize)
    return vault, killswitch
