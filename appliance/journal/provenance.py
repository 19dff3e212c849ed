"""What every message record says about where its text came from.

A message record (see `message`) carries: UTC time and appliance version (added by
`Journal.append`), role, text, the base model {name, sha256, version, signers, origin}, the overlay
{name, version, sha256, signers, demo_signers, on} or null when none is loaded, the control vector
{name, version, sha256, signers, demo_signers, on, strength} or null when none is loaded, the sampling settings,
the system prompt that conditioned the reply (null: none, the model saw only the turns), the name
of the prompt preset it came from (null: none, or typed by hand), the llama.cpp built-in chat
template the turns were rendered with (`chat_template`, from `Session.conditioning`),
the overlay's divergence from the base for that reply where it was measured (else null), and the
device it was computed on (`device`: {"name": "cpu"}, or the card's name with the layers on it,
{"name", "gpu_layers", "of"}; `EngineSettings.device`): a reply from a GPU is not the CPU's bit for
bit. Records written before the device was recorded have no `device` field.
"""

from collections.abc import Sequence
from typing import Optional


def base(name: str, sha256: str, version: int, signers: Sequence[str] = ()) -> dict:
    """`signers`: those that counted when an imported base was accepted; none for the embedded default's built-in pin."""
    origin = "imported, signed" if signers else "embedded, built-in pin"
    return {"name": name, "sha256": sha256, "version": version, "signers": sorted(signers), "origin": origin}


def item(name: str, version: int, sha256: str, signers: list[str], on: bool, demo_signers: Sequence[str] = ()) -> dict:
    """An overlay's or a control vector's record (a control vector's adds its `strength`). `signers`: the 40-hex fingerprints whose signatures counted when the bundle was imported;
    `demo_signers`: those of them that are demo keys (`init --demo`), so no record passes a demo off as real."""
    return {
        "name": name,
        "version": version,
        "sha256": sha256,
        "signers": sorted(signers),
        "demo_signers": sorted(demo_signers),
        "on": on,
    }


def message(
    role: str,
    text: str,
    *,
    base: dict,
    overlay: Optional[dict],
    settings: dict,
    system_prompt: Optional[str],
    preset: Optional[str] = None,
    divergence: Optional[dict] = None,
    control: Optional[dict] = None,
    device: Optional[dict] = None,
    **extra,
) -> dict:
    """The fields of a `message` record; `extra` holds reply facts (finish, tokens)."""
    return {
        "role": role,
        "text": text,
        "base": base,
        "overlay": overlay,
        "control": control,
        "settings": settings,
        "system_prompt": system_prompt,
        "preset": preset,
        "divergence": divergence,
        **({"device": device} if device is not None else {}),
        **extra,
    }
