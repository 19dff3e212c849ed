"""The commands. Each is a thin shell over the library: parse, call, print."""

import click

from .. import __version__, paths, state
from ..hardening import protections
from ..overlay.control import ControlVector
from ..overlay.files import Overlay
from ..runtime.engine_settings import DEFAULT_GPU_LAYERS, GPU_LAYERS_SETTING, GpuRequest, device_line
from ..runtime.sampler import SamplingSettings
from ..runtime.session import Runtime
from ..store.bases import active_model, close_model
from .first_run import initialise
from .options import FiniteFloatRange, engine_settings, gpu_layers_option, resume_option
from .output import LARGE_START, Shown, say, stream, warn
from .unlocking import generation_line, passphrase_option, unlocked, unlocked_appliance
from .vault_commands import erase, kill, kill_policy, logs, passphrase


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="appliance")
def cli(debug: bool) -> None:
    """An air-gapped local language model with a signed, removable Takens-LoRA overlay."""


@cli.command()
@click.option("--if-needed", is_flag=True, help="Do nothing if already initialised; never prompt without a terminal.")
@click.option(
    "--demo",
    is_flag=True,
    help="Also install the demo overlay and control vector, signed by two throwaway demo keys, through the trust chain.",
)
@passphrase_option
def init(if_needed: bool, demo: bool, passphrase_file) -> None:
    """Create the state directory and the vault (passphrase), verify the embedded default model."""
    vault = initialise(paths.state_dir(), passphrase_file, if_needed=if_needed, demo=demo)
    if vault is not None:
        vault.zeroize()


@cli.command()
@passphrase_option
def status(passphrase_file) -> None:
    """Installed artifacts, active versions and their verification (the store is sealed: needs the passphrase)."""
    home = paths.state_dir()
    state.require_initialised(home)
    with unlocked(passphrase_file) as vault:
        model = active_model(vault, steps=Shown(LARGE_START))  # an imported base decrypted in memory, authenticated by its tags
        close_model(model)
        lines = status_lines(vault)
        generation = generation_line(vault)
        device = device_line(vault.setting(GPU_LAYERS_SETTING, DEFAULT_GPU_LAYERS))
    say(f"state:   {home}")
    say(generation)
    say(f"base:    {model.name} v{model.version} ({model.origin})")
    say(f"         {'in the encrypted store' if model.fd is not None else model.path}")
    say(f"         sha256 {model.sha256}  verified")
    say(f"process: {protections().summary()}")
    say(device)
    for line in lines:
        say(line)


def _utf8_text(ctx, param, value: str | None) -> str | None:
    """Text for the model and the journal arrives as bytes on the command line: it must be UTF-8."""
    return None if value is None else _utf8(value)


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a byte that is not UTF-8 arrives as a lone surrogate (PEP 383)
        bad = ord(value[e.start])
        byte = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"character U+{bad:04X}"
        raise click.BadParameter(f"not valid UTF-8 ({byte} at character {e.start})") from None
    return value


def _prompt_text(ctx, param, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("the prompt is empty (or only whitespace)")
    return _utf8(value)


@cli.command()
@click.argument("prompt", callback=_prompt_text)
@click.option("--overlay", type=click.Choice(["on", "off"]), default="off", show_default=True)
@click.option("--control", type=click.Choice(["on", "off"]), default="off", show_default=True, help="The active control vector.")
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--temperature", type=FiniteFloatRange(0.0, 5.0), default=0.7, show_default=True, help="0 is greedy.")
@click.option(
    "--repeat-penalty",
    type=FiniteFloatRange(1.0, 2.0),
    default=SamplingSettings.repeat_penalty,
    show_default=True,
    help="1 is none.",
)
@click.option("--system", "system_prompt", default=None, callback=_utf8_text, help="System prompt (default: the model's own).")
@gpu_layers_option
@resume_option
@passphrase_option
def ask(
    prompt: str,
    overlay: str,
    control: str,
    max_tokens: int,
    seed: int,
    temperature: float,
    repeat_penalty: float,
    system_prompt: str | None,
    gpu_layers: GpuRequest | None,
    resume: str | None,
    passphrase_file,
) -> None:
    """Answer one PROMPT on the active base (and overlay, and control vector), streaming the reply; both are journaled.

    With --resume ID, PROMPT continues that session (its history and system prompt) in a new session."""
    if resume and system_prompt is not None:
        raise click.UsageError("--system and --resume: a resumed session keeps the system prompt it recorded")
    # PROMPT and --system were checked while parsing (exit 2), before anything is opened or journaled.
    state.require_initialised(paths.state_dir())
    # From here the vault is open; the active base is verified (an imported one decrypted into memory)
    # before llama.cpp sees it, then the kill-switch is armed; the session is journaled from its first record.
    with unlocked_appliance(passphrase_file) as app:
        model = app.model
        on = [kind for kind, asked in ((Overlay.KIND, overlay), (ControlVector.KIND, control)) if asked == "on"]
        for kind in on:
            # Decrypted into memory, re-hashed against its accepted manifest and bound to this base before
            # anything is loaded; a refusal here (exit 3, or 6 if erased; 5 if none is installed) leaves nothing behind.
            app.load(kind)
        settings = SamplingSettings(temperature=temperature, seed=seed, repeat_penalty=repeat_penalty)
        runtime = Runtime(model, engine_settings(app.vault, gpu_layers, model.path))
        if resume:
            resumed = app.resume(runtime, resume, settings=settings, on=on)
            for notice in resumed.notices:
                warn(f"note: {notice}")
            session = resumed.session
        else:
            session = app.session(runtime, settings=settings, system_prompt=system_prompt, on=on)
        reply = app.reply(session, prompt, max_tokens=max_tokens, on_text=stream).reply
        say()
    if reply.dropped_turns:
        warn(f"note: {reply.dropped_turns} oldest exchanges left out to fit the context window")


# Vault, journal, erase and kill-switch commands (appliance/cli/vault_commands.py).
for _command in (logs, erase, passphrase, kill, kill_policy):
    cli.add_command(_command)


# Trust chain commands (appliance/cli/trust_commands.py).
from .trust_commands import bundle, status_lines, trust, update, verify_cmd  # noqa: E402

for _command in (trust, bundle, update, verify_cmd):
    cli.add_command(_command)


# The appliance image: pack, list, use, rollback (appliance/cli/image_commands.py).
from .image_commands import image  # noqa: E402

cli.add_command(image)


# Build-station overlay work: training and reports (appliance/cli/overlay_commands.py).
from .overlay_commands import overlay  # noqa: E402

cli.add_command(overlay)

# Control vectors: files in and out of llama.cpp's GGUF, and steering (appliance/cli/control_commands.py).
from .control_commands import control_export, control_import, control_report, steer  # noqa: E402

for _command in (control_export, control_import, control_report, steer):
    overlay.add_command(_command)


# Prompt presets (appliance/cli/preset_commands.py).
from .preset_commands import preset  # noqa: E402

cli.add_command(preset)


# The terminal UI (appliance/cli/chat_command.py).
from .chat_command import chat  # noqa: E402

cli.add_command(chat)


# The OpenAI-compatible API on a Unix socket (appliance/cli/serve_command.py).
from .serve_command import serve  # noqa: E402

cli.add_command(serve)


# Base models (appliance/cli/base_commands.py).
from .base_commands import base, erase_base_cmd  # noqa: E402

cli.add_command(base)
erase.add_command(erase_base_cmd)
