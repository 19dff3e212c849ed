"""What every layer above sees of an overlay or a control vector once it is loaded beside a base.

Its kind, how it is named, its key in a journal record and what that record adds, the error for switching it on
with none loaded, and how its decrypted numbers are zeroed. How each enters the model (input embeddings, or
`llama_set_adapter_cvec`) is the decoder's alone (`runtime/decoder.py`).
"""

from typing import ClassVar, Protocol

from ..errors import ApplianceError
from .control import ControlVector
from .files import Overlay


class Loadable(Protocol):
    """An overlay or a control vector, admitted for a base and held decrypted in memory."""

    KIND: ClassVar[str]  # the store's kind
    NOUN: ClassVar[str]  # as a person reads it
    RECORD: ClassVar[str]  # its key in a journal message's provenance; its switch is journalled as `<RECORD>-toggle`
    NOT_INSTALLED: ClassVar[type[ApplianceError]]  # switched on, or asked for, with none installed

    def record_fields(self) -> dict:
        """What its journal record adds to the fields every loaded item's record has."""
        ...

    def zeroize(self) -> None:
        """Zero the decrypted numbers in place, for the kill-switch (other copies: docs/procedures.md)."""
        ...


LOADABLE: tuple[type[Loadable], ...] = (Overlay, ControlVector)  # in the order records and screens list them
BY_KIND: dict[str, type[Loadable]] = {c.KIND: c for c in LOADABLE}
