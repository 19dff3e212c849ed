"""`appliance preset add NAME --file F | list | remove NAME`: prompt presets, encrypted in the vault (appliance/presets.py).

Everything the command line names is checked before the vault is opened: a bad name, a file that
is missing, too large, empty or not UTF-8 is one `error:` line (exit 2) and nothing stored changes.
"""

from pathlib import Path
from typing import Optional

import click

from .. import presets
from .output import say
from .unlocking import passphrase_option, unlocked

READ_LIMIT = presets.MAX_TEXT + 1  # one byte more than allowed is enough to refuse


def _name(ctx, param, value: str) -> str:
    return presets.check_name(value)


@click.group()
def preset() -> None:
    """Prompt presets: named system prompts, encrypted in the vault; F6 in the chat picks one."""


@preset.command("add")
@click.argument("name", callback=_name)
@click.option("--file", "source", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@passphrase_option
def preset_add(name: str, source: Path, passphrase_file: Optional[Path]) -> None:
    """Store the text of FILE (UTF-8) as the system prompt NAME."""
    with open(source, "rb") as f:
        text = presets.check_text(f.read(READ_LIMIT), str(source))
    with unlocked(passphrase_file) as vault:
        presets.add(vault, name, text)
    say(f"preset {name}: {len(text)} characters, encrypted in the vault")


@preset.command("list")
@passphrase_option
def preset_list(passphrase_file: Optional[Path]) -> None:
    """Every preset: its name, its size and its first line."""
    with unlocked(passphrase_file) as vault:
        every = presets.every(vault)
    for p in every:
        first = p.text.strip().splitlines()[0]
        say(f"{p.name}  {len(p.text)} characters  {first[:60]}")
    say(f"{len(every)} presets")


@preset.command("remove")
@click.argument("name", callback=_name)
@passphrase_option
def preset_remove(name: str, passphrase_file: Optional[Path]) -> None:
    """Crypto-erase the preset NAME (its key leaves the vault, then its ciphertext is deleted)."""
    with unlocked(passphrase_file) as vault:
        presets.remove(vault, name)
    say(f"preset {name}: crypto-erased")
