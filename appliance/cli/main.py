"""Entry point: every failure becomes one `error:` line and the exit code of the brief."""

import sys
import traceback

import click

from ..errors import ApplianceError
from ..hardening import harden_process
from .commands import cli


def main(argv: list[str] | None = None) -> None:
    harden_process()  # before anything can read a passphrase or create a file (appliance/hardening.py)
    args = sys.argv[1:] if argv is None else argv
    try:
        code = cli.main(args=args, prog_name="appliance", standalone_mode=False)
    except click.ClickException as e:  # usage errors: exit 2
        _fail(e.format_message(), e.exit_code)
    except click.Abort:
        _fail("aborted", 1)
    except ApplianceError as e:
        if "--debug" in args:
            traceback.print_exc()
        _fail(str(e), e.exit_code)
    except Exception as e:  # a bug: say so, in one line unless asked for the traceback
        if "--debug" in args:
            traceback.print_exc()
        _fail(f"internal error: {type(e).__name__}: {e}", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)
