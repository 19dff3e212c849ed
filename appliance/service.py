"""The appliance, unlocked: the one lifecycle that `appliance ask` and the chat both run.

    with UnlockedAppliance.open(vault, model) as app:   # the kill-switch armed, the vault zeroed on the way out
        app.load(Overlay.KIND)                          # decrypted, re-verified, bound to this base
        app.load(ControlVector.KIND)                    # the control vector beside it, the same way
        session = app.session(runtime, settings=..., on={Overlay.KIND})
        outcome = app.reply(session, "Hello", max_tokens=64)

Rules:
1. `open` takes the unlocked vault over: its keys are zeroed however the body ends (a kill, a
   refusal, a bug), after the decrypted overlay and control vector are zeroed and the journal closed;
2. the kill-switch is armed for the whole life (pid file, signals): a kill, whether it arrives
   as `Killed` at a safe point (`ask`) or from the chat's kill key (`kill`), runs the same
   `emergency.handle_kill` once: overlay and control vector off and zeroed, a final `kill` record,
   a wipe if asked;
3. a journal session opens at the first record (or when the chat starts one), so work refused
   before it (an overlay that fails verification, a prompt that cannot fit the window) leaves no
   empty session behind;
4. a reply is journalled the same way whoever asks: the user's message with its provenance (base,
   overlay and control vector with their switches, sampling settings, system prompt, and for the API
   the client process that asked) once the prompt is known to fit, then
   the assistant's with finish, tokens, tokens/s and the divergence where it was measured;
5. every switch of the overlay or the control vector is journalled with its moment (`overlay-toggle`,
   `control-toggle`: `<RECORD>-toggle` of its kind, `overlay.loadable`); records are serialised by a lock, since the
   chat replies on a worker thread while its UI thread may switch or kill;
6. resuming a past session (`resume`) reads and verifies it first (nothing is written if that
   fails), rebuilds its history with the system prompt (and preset) that conditioned it, and
   continues in a new journal session whose first record, `resume`, links the old session and its
   sealed head; where the base or overlay that session recorded is not the active one, a notice
   says so and the new replies are made, and recorded, with what is active.
"""

import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from . import presets
from .emergency import handle_kill
from .erase import erase_item, erase_journal
from .errors import ApplianceError, NotFound
from .journal import Journal, provenance
from .journal.resume import PastConversation, past_conversation
from .overlay.files import Overlay
from .overlay.loadable import BY_KIND, LOADABLE
from .runtime.divergence import Divergence
from .runtime.sampler import SamplingSettings
from .runtime.session import Reply, Runtime, Session
from .store import ActiveBase, ActiveItem, InstallRecord, load_active
from .store.layout import Store
from .trust.builtin import VerifiedModel
from .vault import Vault
from .vault.killswitch import Killed, KillSwitch


class DivergenceMeter(Protocol):
    """What measures a reply's divergence from the base while it is generated (the chat's meter)."""

    def divergence(self) -> Optional[Divergence]: ...


@dataclass(frozen=True)
class Outcome:
    """A finished reply, and its measured divergence (None when the meter was off)."""

    reply: Reply
    divergence: Optional[Divergence]


@dataclass(frozen=True)
class ItemState:
    """One kind's part of a snapshot: the overlay's, or the control vector's."""

    kind: str
    loaded: Optional[InstallRecord] = None  # the loaded one, whether switched on or off
    on: bool = False
    problem: str = ""  # why none is loaded when one is installed ("" otherwise)
    fields: dict = field(default_factory=dict)  # what its journal record adds (a control vector's strength)


@dataclass(frozen=True)
class Snapshot:
    """What a front end shows about the unlocked appliance; read-only, taken when asked."""

    base_name: str
    base_sha256: str
    items: tuple[ItemState, ...]  # one per loadable kind, in `LOADABLE`'s order
    session_id: Optional[str]  # the journal session, once opened
    demo_signers_pinned: bool = False  # `init --demo`'s signers still pinned: no production trust yet

    def item(self, kind: str) -> ItemState:
        return next(i for i in self.items if i.kind == kind)


@dataclass(frozen=True)
class Resumed:
    """A past session continued: the session to reply in, and what differs from when it was recorded."""

    session: Session
    past: PastConversation
    notices: tuple[str, ...]


class UnlockedAppliance:
    """Vault, kill-switch, the loaded items (overlay, control vector) and the journal session of one unlocked appliance."""

    def __init__(self, vault: Vault, killswitch: KillSwitch, model: VerifiedModel):
        self.vault, self.killswitch, self.model = vault, killswitch, model
        self.items: dict[str, ActiveItem] = {}  # loaded, by kind
        self.journal: Optional[Journal] = None
        self._first_record: Optional[dict] = None  # written first when the journal session opens (a `resume` link)
        self.killed = False
        self._lock = threading.Lock()
        self._base_record = provenance.base(model.name, model.sha256, model.version, model.signers)
        self.demo_signers_pinned = bool(Store.unlocked(vault).trust().policy().demo)  # the policy changes only under the lock
        killswitch.on_kill(self.drop_all)

    @classmethod
    @contextmanager
    def open(cls, vault: Vault, model: VerifiedModel, killswitch: Optional[KillSwitch] = None) -> Iterator["UnlockedAppliance"]:
        """Rules 1-2. A `Killed` raised in the body is handled (`kill`) and raised on, with `.wiped` set.

        `killswitch`: the one the caller armed with the vault (`cli/unlocking.py`); else one is armed here.
        """
        try:
            with nullcontext(killswitch) if killswitch is not None else KillSwitch(vault.home) as killswitch:
                app = cls(vault, killswitch, model)
                try:
                    killswitch.check()
                    yield app
                    if not app.killed:  # a kill the body already handled (the chat's kill key) is not raised again
                        killswitch.check()
                except Killed as killed:
                    killed.wiped = app.kill(killed)
                    raise
                finally:
                    app.drop_all()
                    app.close_journal()
        finally:
            vault.zeroize()

    @property
    def cancel(self) -> threading.Event:
        """Set by a kill: the decode loop stops within one token."""
        return self.killswitch.cancel

    # -- the loaded items ---------------------------------------------------------------

    def load(self, kind: str, loader: Optional[Callable[[Vault], ActiveItem]] = None) -> ActiveItem:
        """The store's active item of `kind` (or `loader`'s, in tests), decrypted, re-verified and bound to this base.

        Raises its kind's NOT_INSTALLED (none installed), Erased, or Refused (it failed a check); nothing is loaded then.
        """
        self.drop(kind)
        self.items[kind] = (loader or (lambda vault: load_active(kind, ActiveBase(self.model), vault)))(self.vault)
        return self.items[kind]

    def drop(self, kind: str) -> None:
        """Zero the decrypted numbers of the loaded item of `kind`, if any."""
        item = self.items.pop(kind, None)
        if item is not None:
            item.zeroize()

    def drop_all(self) -> None:
        """Every loaded item zeroed (the kill-switch runs this first)."""
        for kind in list(self.items):
            self.drop(kind)

    def session(
        self, runtime: Runtime, *, settings: SamplingSettings, system_prompt: Optional[str], on: Collection[str] = ()
    ) -> Session:
        """A conversation on `runtime` with the loaded items, those of the kinds `on` switched on (each needs one loaded)."""
        session = Session(
            runtime,
            items={kind: item.weights for kind, item in self.items.items()},
            system_prompt=system_prompt,
            settings=settings,
        )
        for kind in on:
            session.set_on(kind, True)
        return session

    def toggle(self, session: Session, kind: str) -> bool:
        """Rule 5: O(1) flip of the item of `kind` (the next reply re-reads the context in the new state), journalled."""
        on = session.toggle(kind)
        key = BY_KIND[kind].RECORD
        self.record(f"{key}-toggle", on=on, **{key: self._record(kind, on)}, after_messages=len(session.history))
        return on

    def _record(self, kind: str, on: bool) -> Optional[dict]:
        item = self.items.get(kind)
        return item.journal_record(on) if item is not None else None

    def _records(self, on: Collection[str]) -> dict[str, Optional[dict]]:
        """Every kind's part of a record's provenance, keyed as the journal keys it (null: none loaded)."""
        return {c.RECORD: self._record(c.KIND, c.KIND in on) for c in LOADABLE}

    # -- replies and the journal ------------------------------------------------------------

    def reply(
        self,
        session: Session,
        text: str,
        *,
        max_tokens: int,
        on_text: Optional[Callable[[str], None]] = None,
        cancel: Optional[threading.Event] = None,
        meter: Optional[DivergenceMeter] = None,
        client: Optional[dict] = None,
    ) -> Outcome:
        """Rule 4: answer `text` in `session`, both messages journalled with their provenance (and the `client`
        that asked, for a program on the API socket)."""
        prov: dict[str, Any] = {
            "base": self._base_record,
            **self._records(session.on),
            **session.conditioning(),
            "device": session.runtime.settings.device(session.runtime.engine.n_layer),
            **({"client": client} if client is not None else {}),
        }
        reply = session.generate(
            text,
            max_tokens=max_tokens,
            on_text=on_text,
            cancel=cancel or self.cancel,
            on_start=lambda: self.record("message", **provenance.message("user", text, **prov)),
        )
        divergence = meter.divergence() if meter is not None else None
        self.record("message", **provenance.message(
            "assistant", reply.text, **prov, divergence=divergence.as_dict() if divergence else None,
            finish=reply.finish, tokens=len(reply.tokens), tokens_per_second=round(reply.tokens_per_second, 1)))  # fmt: skip
        return Outcome(reply, divergence)

    def record(self, kind: str, **fields) -> None:
        """Append to this appliance's journal session, opening it at the first record."""
        with self._lock:
            self._open_journal().append(kind, **fields)

    def open_journal(self) -> str:
        """Open the journal session now rather than at its first record (the chat shows its id at once)."""
        with self._lock:
            return self._open_journal().session_id

    def _open_journal(self) -> Journal:
        if self.journal is None:
            self.journal = journal = Journal.create(self.vault)
            first, self._first_record = self._first_record, None
            if first is not None:
                journal.append(**first)
        return self.journal

    def new_journal(self) -> str:
        """Close the current session and open a fresh one now (the chat's new conversation)."""
        with self._lock:
            self._close_journal()
            self._first_record = None
            self.journal = Journal.create(self.vault)
            return self.journal.session_id

    # -- resuming a past session ------------------------------------------------------------

    def resume(
        self,
        runtime: Runtime,
        session_id: str,
        *,
        settings: SamplingSettings,
        on: Optional[Collection[str]] = None,
    ) -> Resumed:
        """Rule 6, with the items of the kinds `on` switched on. None: the overlay as the session last was, where
        one is loaded; the control vector off, as a new session starts it.

        The new journal session opens at its first record (rule 3), which is the `resume` link.
        """
        past = past_conversation(self.vault, session_id)
        notices, preset = self._changed_since(past)
        if on is None:
            recorded = past.item(Overlay.RECORD)
            on = [Overlay.KIND] if recorded and recorded.get("on") and Overlay.KIND in self.items else []
        session = self.session(runtime, settings=settings, system_prompt=past.system_prompt, on=on)
        session.preset, session.history = preset, [dict(m) for m in past.history]
        with self._lock:
            self._close_journal()
            self._first_record = {"kind": "resume", **past.link.record(), "messages": len(past.history), "notices": notices}
        return Resumed(session, past, tuple(notices))

    def _changed_since(self, past: PastConversation) -> tuple[list[str], Optional[str]]:
        """What the past session recorded that is not what is active now, and the preset that still holds."""
        notices = past.differences(self._base_record, self._records(()))
        preset = past.preset
        if preset is not None:
            try:
                kept = presets.read(self.vault, preset).text == past.system_prompt
            except ApplianceError:
                kept = False
            if not kept:
                notices.append(f"preset {preset!r} was removed or changed since: continuing with the system prompt it recorded")
                preset = None
        return notices, preset

    def close_journal(self) -> None:
        with self._lock:
            self._close_journal()

    def _close_journal(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def snapshot(self, session: Optional[Session], problems: Optional[dict[str, str]] = None) -> Snapshot:
        """`problems`: by kind, why none is loaded where one is installed."""
        items = tuple(self._item_state(c.KIND, session, (problems or {}).get(c.KIND, "")) for c in LOADABLE)
        return Snapshot(
            self.model.name, self.model.sha256, items, self.journal.session_id if self.journal else None, self.demo_signers_pinned
        )

    def _item_state(self, kind: str, session: Optional[Session], problem: str) -> ItemState:
        item = self.items.get(kind)
        if item is None:
            return ItemState(kind, problem=problem)
        return ItemState(kind, item.provenance, bool(session and session.is_on(kind)), problem, item.weights.record_fields())

    # -- kill and erase -----------------------------------------------------------------------

    def kill(self, killed: Optional[Killed] = None) -> list[str]:
        """Rule 2, once: loaded items zeroed, the `kill` record, a wipe if asked or by policy. Returns what a wipe erased."""
        if self.killed:
            return []
        self.killed = True
        self.cancel.set()
        with self._lock:
            return handle_kill(killed or Killed(self.killswitch.wipe), self.killswitch, self.vault, self.journal)

    def erase(self, kind: str) -> list[str]:
        """Crypto-erase every installed version of the loaded item of `kind`; zeroed first (the caller switched it off)."""
        item = self.items.get(kind)
        if item is None:
            raise NotFound(f"no {BY_KIND[kind].NOUN} is loaded")
        self.drop(kind)
        return erase_item(self.vault, kind, item.provenance.name)

    def erase_journal(self) -> list[str]:
        """Every journal session, the open one included (the caller starts a fresh one if it goes on)."""
        with self._lock:
            self._close_journal()
            return erase_journal(self.vault)
