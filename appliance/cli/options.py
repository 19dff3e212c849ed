"""Options that more than one command takes."""

import math
from pathlib import Path
from typing import Any, Optional

import click

from ..journal.frames import SESSION_ID
from ..runtime.engine_settings import (
    DEFAULT_GPU_LAYERS,
    GPU_LAYERS_SETTING,
    EngineSettings,
    GpuRequest,
    parse_request,
    require_gpu,
    resolve,
)
from ..vault import Vault
from .output import warn


def _session_id(ctx, param, value: Optional[str]) -> Optional[str]:
    if value is not None and not SESSION_ID.fullmatch(value):
        raise click.BadParameter(f"not a journal session id: {value!r} (`appliance logs list` shows them)")
    return value


def resume_option(f):
    """`--resume ID`: continue that journal session (journal/resume.py) in a new one that links it."""
    return click.option(
        "--resume",
        metavar="ID",
        default=None,
        callback=_session_id,
        help="Continue this journal session: its history and system prompt, in a new session that links it.",
    )(f)


class FiniteFloatRange(click.FloatRange):
    """`click.FloatRange` that also refuses NaN: NaN compares false with both bounds, so the range lets it
    through (and a sampling setting of NaN would be journalled as JSON that is not JSON)."""

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _gpu_layers(ctx, param, value: Optional[str]) -> Optional[GpuRequest]:
    if value is None:
        return None
    try:
        request = parse_request(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    require_gpu(request)  # a request for a card that is not there is refused now, before anything is opened
    return request


def gpu_layers_option(f):
    """`--gpu-layers N|all|auto`: where llama.cpp computes (runtime/engine_settings.py); kept for the next runs."""
    return click.option(
        "--gpu-layers",
        metavar="N|all|auto",
        default=None,
        callback=_gpu_layers,
        help=f"Layers on the GPU: a number, all, or auto (those that fit; default {DEFAULT_GPU_LAYERS}); kept for later runs.",
    )(f)


def engine_settings(vault: Optional[Vault], given: Optional[GpuRequest], model_path: Path, **fields) -> EngineSettings:
    """What chat and ask run on: `--gpu-layers` if given (and kept in the vault for the next runs), else the kept choice.

    A choice that finds no card here (one kept from a machine with one, or `auto`) computes on the CPU, with one line
    saying why."""
    if vault is not None and given is not None:
        vault.set_setting(GPU_LAYERS_SETTING, given)
    kept = vault.setting(GPU_LAYERS_SETTING, DEFAULT_GPU_LAYERS) if vault is not None else DEFAULT_GPU_LAYERS
    request = given if given is not None else parse_request(str(kept))
    settings, note = resolve(request, model_path, EngineSettings(**fields))
    if note is not None:
        warn(f"note: {note}")
    return settings
