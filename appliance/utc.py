"""UTC time, written and read one way everywhere: `YYYY-MM-DDTHH:MM:SSZ` (microseconds in the journal).

A manifest's `created`/`expires`, the time floor, vault records and accepted records use whole
seconds; journal records keep microseconds so that the order of events within a second is kept.
"""

import re
from datetime import datetime, timedelta, timezone

SECONDS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MICROSECONDS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
SECONDS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
# How far a signer's clock may run ahead of this one (drift, no NTP on either side). One value for every
# rule that compares them: a manifest's `created` and a signature's time may be this far ahead, and the
# clock this far behind the time floor, so what one rule accepts never makes another refuse everything.
CLOCK_TOLERANCE = timedelta(hours=1)


def now() -> datetime:
    return datetime.now(timezone.utc)


def format_time(t: datetime) -> str:
    """Whole seconds: `YYYY-MM-DDTHH:MM:SSZ`."""
    return t.astimezone(timezone.utc).strftime(SECONDS_FORMAT)


def format_precise(t: datetime) -> str:
    """With microseconds: `YYYY-MM-DDTHH:MM:SS.ffffffZ` (journal records)."""
    return t.astimezone(timezone.utc).strftime(MICROSECONDS_FORMAT)


def parse_time(text: str) -> datetime:
    """A `YYYY-MM-DDTHH:MM:SSZ` string as an aware UTC datetime; ValueError otherwise."""
    if not isinstance(text, str) or not SECONDS_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not YYYY-MM-DDTHH:MM:SSZ")
    return datetime.strptime(text, SECONDS_FORMAT).replace(tzinfo=timezone.utc)


def now_text() -> str:
    return format_time(now())
