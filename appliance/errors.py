"""Every way the appliance refuses, as a typed exception carrying its exit code.

The CLI turns any `ApplianceError` into one `error:` line on stderr and exits
with `exit_code`; anything else is a bug (exit 1).

    0 ok | 1 internal error | 2 usage | 3 refused by verification or policy
    4 locked or wrong passphrase | 5 not found | 6 erased
"""


class ApplianceError(Exception):
    exit_code = 1


class UsageError(ApplianceError):
    exit_code = 2


class Refused(ApplianceError):
    """Verification or policy said no. Nothing was loaded or changed."""

    exit_code = 3


class HashMismatch(Refused):
    def __init__(self, path, expected: str, actual: str):
        super().__init__(f"{path}: SHA-256 mismatch: expected {expected}, got {actual}")
        self.path, self.expected, self.actual = path, expected, actual


class SizeMismatch(Refused):
    def __init__(self, path, expected: int, actual: int):
        super().__init__(f"{path}: size mismatch: expected {expected} bytes, got {actual}")


class OverlayRejected(Refused):
    """An overlay file is malformed, out of bounds, or bound to another base."""


class Locked(ApplianceError):
    exit_code = 4


class NotFound(ApplianceError):
    exit_code = 5


class Erased(ApplianceError):
    exit_code = 6


class ContextOverflow(UsageError):
    """The system prompt and the newest user turn alone do not fit the context window."""


class EnvironmentRefused(Refused):
    """The machine cannot hold the state: disk full, file size limit, read-only, not a directory, no permission.

    Not a bug, so not exit 1: the write that failed left the state as it was (a temp file removed,
    a failed append cut back), and freeing space or fixing the mount is enough to retry.
    """
