"""Entry point: every failure becomes one `error:` line, ending with its reason code, and its exit code.

The line is `error: MESSAGE [REASON]`: an `ApplianceError`'s own `reason` (appliance/errors.py),
`usage` for click's usage errors (exit 2), `aborted` for an interrupted prompt and
`internal-error` for a bug (exit 1). docs/errors.md lists every code.
"""

import errno
import os
import sys
import traceback
from typing import NoReturn

import click

from .. import paths
from ..errors import ApplianceError, EnvironmentRefused, UsageError
from ..hardening import harden_process
from .commands import cli
from .output import warn

# What the OS answers when the machine cannot hold the state: not a bug (exit 3, not 1). Every
# write to the state dir goes through a temp file removed on failure (fsutil.atomic_file), or cuts
# a failed append back (journal), and `init` writes its marker last, so the state is as it was:
# tests/test_environment_failures.py and tests/store/test_import_environment.py prove it.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR})
CANNOT_WRITE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})

# Reason codes of failures that are not an ApplianceError.
USAGE = UsageError.reason  # click's own usage errors: the same code as ours
ABORTED = "aborted"  # a prompt interrupted (ctrl-c, end of input)
INTERNAL_ERROR = ApplianceError.reason  # a bug


def main(argv: list[str] | None = None) -> None:
    harden_process()  # before anything can read a passphrase or create a file (appliance/hardening.py)
    args = sys.argv[1:] if argv is None else argv
    try:
        code = cli.main(args=args, prog_name="appliance", standalone_mode=False)
    except click.ClickException as e:  # usage errors: exit 2
        _fail(e.format_message(), e.exit_code, USAGE)
    except click.Abort:
        _fail("aborted", 1, ABORTED)
    except Exception as e:
        if "--debug" in args:
            warn(traceback.format_exc().rstrip())
        error = _typed(e)
        if error is None:  # a bug: say so, in one line unless asked for the traceback
            _fail(f"internal error: {type(e).__name__}: {e}", 1, INTERNAL_ERROR)
        _fail(str(error), error.exit_code, error.reason)
    sys.exit(code if isinstance(code, int) else 0)


def _typed(e: Exception) -> ApplianceError | None:
    """The error as the user meets it: an ApplianceError as raised, an environment OSError typed; None for a bug."""
    if isinstance(e, ApplianceError):
        return e
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
        return _environment_refused(e)
    return None


def _os_reason(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno is not None else type(e).__name__


def _environment_refused(e: OSError) -> EnvironmentRefused:
    """One line: the file (the destination of a copy, link or rename), the OS's reason, the state dir."""
    path = e.filename2 if e.filename2 is not None else e.filename
    verb = "write" if e.errno in CANNOT_WRITE else "use"
    what = f"cannot {verb} {os.fsdecode(path)}" if path is not None else f"cannot {verb}"  # write(2) names no file
    return EnvironmentRefused(f"{what}: {e.strerror or _os_reason(e)}; nothing was changed in {paths.state_dir()}")


def _fail(message: str, code: int, reason: str) -> NoReturn:
    warn(f"error: {' '.join(message.split())} [{reason}]")
    sys.exit(code)
