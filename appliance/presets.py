"""Prompt presets: named system prompts, each encrypted under its own vault data key.

    <state>/presets/<NAME>.preset   AES-256-GCM(data key `preset/<NAME>`, the text as UTF-8,
                                    associated data "appliance-preset/1" || NAME)

Rules:
1. a name is 1-64 characters of letters, digits, `.`, `_`, `-`, starting with a letter or digit
   (it is a file name and a vault key id); a text is non-empty UTF-8 of at most `MAX_TEXT` bytes;
2. `add` checks everything first, writes the ciphertext (atomic, mode 0600), then records its key:
   a refused or failed add leaves nothing behind; a name already taken is refused (remove it first);
3. `remove` is a crypto-erase: the key leaves the vault's table, then the ciphertext is deleted;
4. the associated data binds a ciphertext to its name: a file renamed to another preset's name
   fails authentication.
"""

import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from .errors import NotFound, Refused, UsageError
from .fsutil import atomic_write
from .vault import Vault, random_key, zeroize
from .vault.aead import seal, unb64, unseal

PRESET_DIR = "presets"  # under the state dir
PRESET_KEYS = "preset/"  # the prefix of the presets' data key ids
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TEXT = 16 << 10  # bytes: far above a system prompt that leaves the window room for a conversation
FORMAT = b"appliance-preset/1"


class PresetRejected(UsageError):
    """A preset name or text that is not valid (rule 1): nothing was stored."""


class PresetExists(Refused):
    """`preset add` under a name already taken: remove it first."""


class PresetNotFound(NotFound):
    """No preset by that name."""


class PresetUnreadable(Refused):
    """A preset's ciphertext is missing or fails authentication (damaged, or renamed from another preset)."""


@dataclass(frozen=True)
class Preset:
    name: str
    text: str


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise PresetRejected(f"not a preset name: {name!r} (1-64 letters, digits, '.', '_', '-'; first a letter or digit)")
    return name


def check_text(data: bytes, source: str) -> str:
    if len(data) > MAX_TEXT:
        raise PresetRejected(f"{source} is larger than {MAX_TEXT} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PresetRejected(f"{source} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    if not text.strip():
        raise PresetRejected(f"{source} is empty")
    return text


def _key_id(name: str) -> str:
    return f"{PRESET_KEYS}{name}"


def _rel(name: str) -> str:
    return f"{PRESET_DIR}/{name}.preset"


def _ad(name: str) -> bytes:
    return FORMAT + b"\0" + name.encode()


def names(vault: Vault) -> list[str]:
    return [key_id.removeprefix(PRESET_KEYS) for key_id in vault.key_ids(PRESET_KEYS)]


def add(vault: Vault, name: str, text: str) -> Preset:
    """Rule 2."""
    check_name(name)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise PresetRejected("the preset text is not valid UTF-8") from None
    check_text(data, "the preset text")
    if name in names(vault):
        raise PresetExists(f"a preset named {name!r} exists: `appliance preset remove {name}` first")
    path = vault.home / _rel(name)
    key = random_key()
    created = not path.parent.is_dir()
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        atomic_write(path, seal(key, data, _ad(name)).encode())
        try:
            vault.record_data_key(_key_id(name), key, files=[_rel(name)])
        except BaseException:
            path.unlink(missing_ok=True)
            if created:
                path.parent.rmdir()
            raise
    finally:
        zeroize(key)
    return Preset(name, text)


def read(vault: Vault, name: str) -> Preset:
    check_name(name)
    if name not in names(vault):
        raise PresetNotFound(f"no preset named {name!r}")
    key = vault.data_key(_key_id(name))
    try:
        sealed = (vault.home / _rel(name)).read_bytes()
        text = unseal(key, unb64(sealed.decode("ascii", "replace").strip(), PresetUnreadable, _rel(name)), _ad(name))
    except FileNotFoundError:
        raise PresetUnreadable(f"preset {name!r}: {_rel(name)} is missing") from None
    except InvalidTag:
        raise PresetUnreadable(f"preset {name!r}: {_rel(name)} fails authentication") from None
    finally:
        zeroize(key)
    return Preset(name, text.decode())


def every(vault: Vault) -> list[Preset]:
    return [read(vault, name) for name in names(vault)]


def remove(vault: Vault, name: str) -> list[str]:
    """Rule 3: the ciphertext paths deleted."""
    check_name(name)
    if name not in names(vault):
        raise PresetNotFound(f"no preset named {name!r}")
    return vault.erase([_key_id(name)])
