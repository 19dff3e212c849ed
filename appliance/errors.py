"""Every way the appliance refuses, as a typed exception carrying its exit code and reason code.

The CLI turns any `ApplianceError` into one `error:` line on stderr that ends with the error's
reason code in brackets, and exits with `exit_code`; anything else is a bug (exit 1):

    error: manifest.json has 1 of 2 required signatures from pinned signers (...) [threshold-not-met]

    0 ok | 1 internal error | 2 usage | 3 refused by verification or policy
    4 locked or wrong passphrase | 5 not found | 6 erased

The reason code is the class name in kebab case (`ThresholdNotMet` -> `threshold-not-met`) unless
a class sets `reason` itself, and no two classes share one: a script tells one refusal from
another by the code, a test by the type, neither by the wording. docs/errors.md lists them all.
"""

import re

_WORD_START = re.compile(r"(?<!^)(?=[A-Z])")


def reason_code(class_name: str) -> str:
    """`ThresholdNotMet` -> `threshold-not-met`."""
    return _WORD_START.sub("-", class_name).lower()


class ApplianceError(Exception):
    exit_code = 1
    reason = "internal-error"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "reason" not in cls.__dict__:  # derived from the class's own name, never inherited
            cls.reason = reason_code(cls.__name__)


class ModelFailed(ApplianceError):
    """The model file, already verified against its pin or manifest, could not be read, or llama.cpp failed on it."""


class UsageError(ApplianceError):
    exit_code = 2
    reason = "usage"  # the code click's own usage errors get too


class ContextOverflow(UsageError):
    """The system prompt and the newest user turn alone do not fit the context window."""


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
    """An overlay file is malformed or out of bounds."""


class BindingMismatch(Refused):
    """An overlay made for another base: its manifest or its own file binds another SHA-256, or another hidden size."""


class EnvironmentRefused(Refused):
    """The machine cannot hold the state: disk full, file size limit, read-only, not a directory, no permission.

    Not a bug, so not exit 1: the write that failed left the state as it was (a temp file removed,
    a failed append cut back), and freeing space or fixing the mount is enough to retry.
    """


class NotConfirmed(Refused):
    """An erase whose typed confirmation did not match: nothing was erased."""


class EraseNotProven(Refused):
    """An erase ran but its proof failed: the key it destroyed still opens. Never expected; never ignore it."""


class Locked(ApplianceError):
    exit_code = 4


class NoPassphrase(Locked):
    """No passphrase could be read (no file, an empty or unreadable one, no terminal): the vault stays locked."""


class NotFound(ApplianceError):
    exit_code = 5


class NoOverlay(NotFound):
    """No overlay is installed (or loaded), so there is none to switch on."""


class NoControlVector(NotFound):
    """No control vector is installed (or loaded), so none can be switched on."""


class Erased(ApplianceError):
    exit_code = 6
