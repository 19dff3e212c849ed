"""How the API refuses a request: the protocol's error object, an HTTP status, a reason code from docs/errors.md.

Every refusal is an `ApplianceError`, so its code is the one the CLI would print; the status comes
from its exit code (a bad request 400, not found 404, ...), or from the class where HTTP has a
closer word (a body over the cap is 413).
"""

from ..errors import ApplianceError, NotFound, UsageError

# An exit code's kind of failure, as an HTTP status: usage -> bad request, refused -> forbidden,
# locked or killed -> unavailable, not found, erased -> gone, anything else a server error.
STATUS_BY_EXIT = {2: 400, 3: 403, 4: 503, 5: 404, 6: 410}


class RequestTooLarge(UsageError):
    """A request body over the API's size cap: refused before it is read whole."""

    status = 413


class RequestNotUtf8(UsageError):
    """A request body, or a string in it, that is not valid UTF-8."""


class RequestNotJson(UsageError):
    """A request body that is not one JSON object (or has a duplicate key, NaN or Infinity)."""


class RequestInvalid(UsageError):
    """A request whose fields are missing, of the wrong type or out of range, or whose messages this API does not take."""


class UnknownModel(NotFound):
    """A request for a model other than the appliance's active base (`GET /v1/models` names it)."""


def status_of(error: BaseException) -> int:
    if not isinstance(error, ApplianceError):
        return 500
    return getattr(error, "status", STATUS_BY_EXIT.get(error.exit_code, 500))


def error_object(error: BaseException) -> dict:
    """The OpenAI error object: `code` is the stable reason code, `message` for a person."""
    if isinstance(error, ApplianceError):
        message, code = " ".join(str(error).split()), error.reason
    else:  # a bug: named, never hidden (the server goes on; the journal has what was written)
        message, code = f"internal error: {type(error).__name__}: {error}", "internal-error"
    kind = "invalid_request_error" if status_of(error) < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
