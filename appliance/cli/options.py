"""Options that more than one command takes."""

import math
from typing import Any, Optional

import click

from ..journal.frames import SESSION_ID


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
