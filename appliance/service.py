"""The appliance, unlocked: the one lifecycle that `appliance ask` and the chat both run.

    with UnlockedAppliance.open(vault, model) as app:   # the kill-switch armed, the vault zeroed on the way out
        app.load_overlay()                              # decrypted, re-verified, bound to this base
        app.load_control()                              # the control vector beside it, the same way
        session = app.session(runtime, settings=...)
        outcome = app.reply(session, "Hello", max_tokens=64)

Rules:
1. `open` takes the unlocked vault over: its keys are zeroed however the body ends (a kill, a
   refusal, a bug), after the decrypted overlay is zeroed and the journal closed;
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
   `control-toggle`); records are serialised by a lock, since the
   chat replies on a worker thread while its UI thread may switch or kill;
6. resuming a past session (`resume`) reads and verifies it first (nothing is written if that
   fails), rebuilds its history with the system prompt (and preset) that conditioned it, and
   continues in a new journal session whose first record, `resume`, links the old session and its
   sealed head; where the base or overlay that session recorded is not the active one, a notice
   says so and the new replies are made, and recorded, with what is active.
"""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Optional, Protocol

from . import presets
from .emergency import handle_kill
from .erase import erase_item, erase_journal
from .errors import ApplianceError, NotFound
from .journal import Journal, provenance
from .journal.resume import PastConversation, past_conversation
from .runtime.sampler import SamplingSettings
from .runtime.session import Reply, Runtime, Session
from .store import ActiveBase, ActiveControl, ActiveOverlay, InstallRecord, load_active_control, load_active_overlay
from .store.layout import Store
from .trust.builtin import VerifiedModel
from .vault import Vault
from .vault.killswitch import Killed, KillSwitch


class DivergenceMeter(Protocol):
    """What measures a reply's divergence from the base while it is generated (the chat's meter)."""

    def divergence(self): ...


@dataclass(frozen=True)
class Outcome:
    """A finished reply, and its measured divergence (None when the meter was off)."""

    reply: Reply
    divergence: Optional[object]


@dataclass(frozen=True)
class Snapshot:
    """What a front end shows about the unlocked appliance; read-only, taken when asked."""

    base_name: str
    base_sha256: str
    overlay: Optional[InstallRecord]  # the loaded overlay, whether switched on or off
    overlay_on: bool
    overlay_problem: str  # why no overlay is loaded when one is installed ("" otherwise)
    session_id: Optional[str]  # the journal session, once opened
    control: Optional[InstallRecord] = None  # the loaded control vector, whether switched on or off
    control_on: bool = False
    control_strength: Optional[float] = None  # what its directions are applied at, when one is loaded
    control_problem: str = ""  # why no control vector is loaded when one is installed ("" otherwise)
    demo_signers_pinned: bool = False  # `init --demo`'s signers still pinned: no production trust yet


@dataclass(frozen=True)
class Resumed:
    """A past session continued: the session to reply in, and what differs from when it was recorded."""

    session: Session
    past: PastConversation
    notices: tuple[str, ...]


class UnlockedAppliance:
    """Vault, kill-switch, the loaded overlay and the journal session of one unlocked appliance."""

    def __init__(self, vault: Vault, killswitch: KillSwitch, model: VerifiedModel):
        self.vault, self.killswitch, self.model = vault, killswitch, model
        self.active: Optional[ActiveOverlay] = None
        self.control: Optional[ActiveControl] = None
        self.journal: Optional[Journal] = None
        self._first_record: Optional[dict] = None  # written first when the journal session opens (a `resume` link)
        self.killed = False
        self._lock = threading.Lock()
        self._base_record = provenance.base(model.name, model.sha256, model.version, model.signers)
        self.demo_signers_pinned = bool(Store.unlocked(vault).trust().policy().demo)  # the policy changes only under the lock
        killswitch.on_kill(self.drop_overlay)
        killswitch.on_kill(self.drop_control)

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
                    app.drop_overlay()
                    app.drop_control()
                    app.close_journal()
        finally:
            vault.zeroize()

    @property
    def cancel(self) -> threading.Event:
        """Set by a kill: the decode loop stops within one token."""
        return self.killswitch.cancel

    # -- the overlay --------------------------------------------------------------------

    def load_overlay(self, loader: Optional[Callable[[Vault], ActiveOverlay]] = None) -> ActiveOverlay:
        """The store's active overlay (or `loader`'s, in tests), decrypted and re-verified for this base.

        Raises NoOverlay (none installed), Erased, or Refused (it failed a check); nothing is loaded then.
        """
        self.drop_overlay()
        self.active = (loader or (lambda vault: load_active_overlay(ActiveBase(self.model), vault)))(self.vault)
        return self.active

    def drop_overlay(self) -> None:
        """Zero the decrypted weights (the kill-switch runs this first)."""
        if self.active is not None:
            self.active.zeroize()
            self.active = None

    def session(
        self,
        runtime: Runtime,
        *,
        settings: SamplingSettings,
        system_prompt: Optional[str],
        overlay_on: bool,
        control_on: bool = False,
    ) -> Session:
        """A conversation on `runtime` with the loaded overlay and control vector, each switched as asked (on needs one loaded)."""
        session = Session(
            runtime,
            overlay=self.active.overlay if self.active else None,
            system_prompt=system_prompt,
            settings=settings,
            control=self.control.vector if self.control else None,
        )
        session.set_overlay(overlay_on)
        session.set_control(control_on)
        return session

    def toggle(self, session: Session) -> bool:
        """Rule 5: O(1) flip (the next reply re-reads the context in the new state), journalled."""
        on = session.toggle()
        self.record("overlay-toggle", on=on, overlay=self._overlay_record(on), after_messages=len(session.history))
        return on

    def _overlay_record(self, on: bool) -> Optional[dict]:
        return self.active.provenance.journal_record(on) if self.active else None

    # -- the control vector -------------------------------------------------------------

    def load_control(self, loader: Optional[Callable[[Vault], ActiveControl]] = None) -> ActiveControl:
        """The store's active control vector (or `loader`'s, in tests), decrypted, re-verified and bound to this base
        (its hash, hidden size and block count).

        Raises NoControlVector (none installed), Erased, or Refused (it failed a check); nothing is loaded then.
        """
        self.drop_control()
        self.control = (loader or (lambda vault: load_active_control(ActiveBase(self.model), vault)))(self.vault)
        return self.control

    def drop_control(self) -> None:
        """Zero the decrypted directions (the kill-switch runs this, as for the overlay)."""
        if self.control is not None:
            self.control.zeroize()
            self.control = None

    def toggle_control(self, session: Session) -> bool:
        """Rule 5 for the control vector: O(1) flip (the next reply re-reads the context in the new state), journalled."""
        on = session.toggle_control()
        self.record("control-toggle", on=on, control=self._control_record(on), after_messages=len(session.history))
        return on

    def _control_record(self, on: bool) -> Optional[dict]:
        return self.control.journal_record(on) if self.control else None

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
        prov = {
            "base": self._base_record,
            "overlay": self._overlay_record(session.overlay_on),
            "control": self._control_record(session.control_on),
            **session.conditioning(),
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
            "assistant", reply.text, **prov, divergence=divergence and divergence.as_dict(),
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
        overlay_on: Optional[bool] = None,
        control_on: bool = False,
    ) -> Resumed:
        """Rule 6. `overlay_on` None: as the session last was, where the active overlay can do it; the control
        vector is as asked (off unless `control_on`), like a new session's.

        The new journal session opens at its first record (rule 3), which is the `resume` link.
        """
        past = past_conversation(self.vault, session_id)
        notices, preset = self._changed_since(past)
        recorded_on = bool(past.overlay and past.overlay.get("on"))
        on = (recorded_on and self.active is not None) if overlay_on is None else overlay_on
        session = self.session(runtime, settings=settings, system_prompt=past.system_prompt, overlay_on=on, control_on=control_on)
        session.preset, session.history = preset, [dict(m) for m in past.history]
        with self._lock:
            self._close_journal()
            self._first_record = {"kind": "resume", **past.link.record(), "messages": len(past.history), "notices": notices}
        return Resumed(session, past, tuple(notices))

    def _changed_since(self, past: PastConversation) -> tuple[list[str], Optional[str]]:
        """What the past session recorded that is not what is active now, and the preset that still holds."""
        notices = past.differences(self._base_record, self._overlay_record(False), self._control_record(False))
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

    def snapshot(self, session: Optional[Session], overlay_problem: str = "", control_problem: str = "") -> Snapshot:
        return Snapshot(
            self.model.name, self.model.sha256, self.active.provenance if self.active else None,
            bool(session and session.overlay_on), overlay_problem, self.journal.session_id if self.journal else None,
            self.control.provenance if self.control else None, bool(session and session.control_on),
            self.control.vector.strength if self.control else None, control_problem, self.demo_signers_pinned,
        )  # fmt: skip

    # -- kill and erase -----------------------------------------------------------------------

    def kill(self, killed: Optional[Killed] = None) -> list[str]:
        """Rule 2, once: overlay zeroed, the `kill` record, a wipe if asked or by policy. Returns what a wipe erased."""
        if self.killed:
            return []
        self.killed = True
        self.cancel.set()
        with self._lock:
            return handle_kill(killed or Killed(self.killswitch.wipe), self.killswitch, self.vault, self.journal)

    def erase_overlay(self) -> list[str]:
        """Crypto-erase every installed version of the loaded overlay; switched off and zeroed first."""
        if self.active is None:
            raise NotFound("no overlay is loaded")
        name = self.active.provenance.name
        self.drop_overlay()
        return erase_item(self.vault, "overlay", name)

    def erase_journal(self) -> list[str]:
        """Every journal session, the open one included (the caller starts a fresh one if it goes on)."""
        with self._lock:
            self._close_journal()
            return erase_journal(self.vault)
