"""What the chat holds between key presses, free of widgets: the UI's state over `service.UnlockedAppliance`.

One `ChatCore` per running UI. Locked, it holds only the runtime (the verified base loaded in
llama.cpp, given from outside so tests can pass a fake one) and the divergence meter. `unlock`
opens the vault and keeps an `UnlockedAppliance` open (the same lifecycle as `appliance ask`:
kill-switch armed, overlay re-verified, every reply and switch journalled with its provenance) until
`lock` or `kill` closes it; the UI then shows the unlock screen. The screens read `status()`, a
snapshot, rather than reaching into the appliance. Resuming a past session is the appliance's
(`UnlockedAppliance.resume`); the core only swaps the session it replies in.
"""

import secrets
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..errors import ApplianceError, Locked, NotFound
from ..fsutil import atomic_write
from ..journal import read_session
from ..journal.transcript import markdown_transcript
from ..overlay.files import Overlay
from ..overlay.loadable import BY_KIND, LOADABLE
from ..presets import Preset
from ..presets import read as read_preset
from ..runtime.sampler import SamplingSettings
from ..runtime.session import Runtime, Session
from ..service import Outcome, Resumed, Snapshot, UnlockedAppliance
from ..store import ActiveItem
from ..trust.builtin import VerifiedModel
from ..vault import Vault
from ..vault.killswitch import KillSwitch
from .divergence import AuditMeter

__all__ = ["ChatCore", "Outcome"]


class ChatCore:
    def __init__(
        self,
        home: Path,
        model: VerifiedModel,
        runtime: Runtime,
        *,
        settings: SamplingSettings = SamplingSettings(),
        max_tokens: int = 256,
        system_prompt: Optional[str] = None,
        loaders: Optional[dict[str, Callable[[Vault], ActiveItem]]] = None,
        resume: Optional[str] = None,
    ):
        self.home, self.model, self.runtime = home, model, runtime
        self.settings, self.max_tokens, self.system_prompt = settings, max_tokens, system_prompt
        # Tests inject items here, by kind; the product always decrypts the store's active ones, re-verified.
        self._loaders = loaders or {}
        self.audit = AuditMeter.install(runtime)
        self.app: Optional[UnlockedAppliance] = None
        self._open = ExitStack()
        self.problems: dict[str, str] = {}  # by kind: why none is loaded, when one should be
        self.session: Optional[Session] = None
        # tokens/s of the last overlay-on reply, without (False) and with (True) the meter: the help shows its cost
        self.overlay_speed: dict[bool, float] = {}
        self.resume_at_unlock = resume  # a past session to continue once unlocked (`chat --resume ID`)
        self.notices: list[str] = []  # for the chat screen to show once: what a resume at unlock said

    # -- locked / unlocked ------------------------------------------------------------

    @property
    def unlocked(self) -> bool:
        return self.app is not None

    @property
    def vault(self) -> Vault:
        """The unlocked vault (the journal's sessions, the presets); `Locked` while locked."""
        return self._appliance().vault

    def _appliance(self) -> UnlockedAppliance:
        """The open appliance; `Locked` (exit 4) if a screen asks a locked core (the screens lock first)."""
        if self.app is None:
            raise Locked("the appliance is locked: unlock it first")
        return self.app

    def _session(self) -> Session:
        """The session replies go to; `Locked` while there is none (it exists from unlock to lock)."""
        if self.session is None:
            raise Locked("the appliance is locked: no chat session")
        return self.session

    def vault_state(self) -> str:
        return Vault.state(self.home)

    def create_vault(self, passphrase: bytes | bytearray) -> None:
        """First run (or after `erase all`): a new vault, opened as it is made (one key derivation)."""
        self.start(Vault.create(self.home, passphrase))

    def unlock(self, passphrase: bytes | bytearray) -> None:
        """Open the vault (exit-4 errors propagate unchanged), arm the kill-switch, start a session."""
        self.start(Vault.unlock(self.home, passphrase))

    def start(self, vault: Vault, killswitch: Optional[KillSwitch] = None) -> None:
        """Unlocked on `vault`, which is the core's from here (zeroed when it locks), like `killswitch` if given
        (`appliance chat` armed it and opened the vault at the shell; released when the core locks, so that an
        unlock after a kill arms its own). Without `killswitch`, must run on the main thread: the one armed here
        installs signal handlers (with one, `appliance chat` runs this on its loading worker)."""
        if killswitch is not None:
            self._open.push(killswitch)
        self.app = self._open.enter_context(UnlockedAppliance.open(vault, self.model, killswitch))
        try:
            self.problems = {c.KIND: self._why_not_loaded(c.KIND) for c in LOADABLE}
            self._first_session()
        except BaseException:  # e.g. the journal cannot be written: stay locked rather than chat unjournalled
            self.lock()
            raise

    def _why_not_loaded(self, kind: str) -> str:
        """Load the item of `kind`: "" when loaded or when none is installed; else why (refused by verification, or
        erased): the chat goes on without it and says so."""
        try:
            self._appliance().load(kind, self._loaders.get(kind))
        except BY_KIND[kind].NOT_INSTALLED:
            return ""
        except ApplianceError as e:
            return str(e)
        return ""

    def _first_session(self) -> None:
        """The session asked to be resumed (once: after a kill, unlocking again starts fresh), else a new one."""
        sid, self.resume_at_unlock = self.resume_at_unlock, None
        if sid is not None:
            try:
                self.notices = [f"resumed {sid}", *self.resume(sid).notices]
                return
            except ApplianceError as e:  # not found, erased, broken: said on screen, and a new session instead
                self.notices = [f"cannot resume {sid}: {e}"]
        self.new_session()

    def new_session(self) -> None:
        """A fresh journal session and an empty history; the loaded items keep their switch positions (at unlock the
        overlay starts on, the control vector off, like `ask`'s)."""
        app = self._appliance()
        on = self.session.on if self.session else {Overlay.KIND}
        app.new_journal()
        self.runtime.decoder.reset()
        self.session = app.session(
            self.runtime, settings=self.settings, system_prompt=self.system_prompt, on=[k for k in on if k in app.items]
        )

    def resume(self, session_id: str) -> Resumed:
        """Continue a past session (read and verified first: a failure changes nothing here)."""
        app = self._appliance()
        resumed = app.resume(self.runtime, session_id, settings=self.settings)
        self.runtime.decoder.reset()
        self.session = resumed.session
        app.open_journal()
        return resumed

    def set_system_prompt(self, text: Optional[str], preset: Optional[str] = None) -> None:
        """This session's only (a new session starts from `--system` again); the next reply is conditioned on it.

        `preset`: the name of the preset `text` came from; journalled with each reply it conditions."""
        session = self._session()
        session.system_prompt, session.preset = text, preset

    def use_preset(self, name: str) -> Preset:
        preset = read_preset(self._appliance().vault, name)
        self.set_system_prompt(preset.text, preset.name)
        return preset

    def dropped_exchanges(self) -> int:
        """Oldest exchanges of this session the model no longer sees (they did not fit the window)."""
        return self.session.first_turn // 2 if self.session else 0

    def status(self) -> Snapshot:
        return self._appliance().snapshot(self.session, self.problems)

    def lock(self) -> None:
        """Back to the locked state: loaded items dropped and zeroed, journal and vault keys zeroed, KV cache cleared."""
        self._switch_off()
        try:
            self._open.close()
        finally:
            self.runtime.decoder.reset()
            self.app = self.session = None

    def kill(self) -> None:
        """The kill key, or `appliance kill` from elsewhere. The caller has stopped the reply first."""
        try:
            self._appliance().kill()
        finally:
            self.lock()

    def kill_requested(self) -> bool:
        return self.app is not None and self.app.cancel.is_set()

    def _switch_off(self) -> None:
        if self.session is not None:
            self.session.unload()

    # -- the switches and the meter ------------------------------------------------------------

    def toggle(self, kind: str) -> bool:
        """O(1) flip of the item of `kind` (the next reply re-prefills in the new state); journalled with its moment."""
        return self._appliance().toggle(self._session(), kind)

    def audit_cost(self) -> str:
        """The meter's measured cost in this run, once an overlay-on reply was made both ways."""
        if len(self.overlay_speed) < 2:
            return "This run has not yet measured it: make one overlay-ON reply with the meter off and one with it on."
        off, on = self.overlay_speed[False], self.overlay_speed[True]
        return f"Measured in this run: {off:.1f} tok/s without the meter, {on:.1f} tok/s with it ({on / off:.0%})."

    # -- a reply (on a worker thread) ----------------------------------------------------------

    def reply(self, text: str, on_text: Callable[[str], None], stop) -> Outcome:
        session = self._session()
        outcome = self._appliance().reply(
            session, text, max_tokens=self.max_tokens, on_text=on_text, cancel=stop, meter=self.audit
        )
        reply = outcome.reply
        if Overlay.KIND in reply.on and reply.tokens:
            self.overlay_speed[outcome.divergence is not None] = reply.tokens_per_second
        return outcome

    def can_take_back(self) -> bool:
        """Whether there is a last exchange to regenerate or edit: the history ends with a reply the model still sees."""
        if self.session is None:
            return False
        history = self.session.history
        return len(history) - self.session.first_turn >= 2 and history[-1]["role"] == "assistant"

    def last_prompt(self) -> str:
        return self._session().history[-2]["content"] if self.can_take_back() else ""

    def last_reply(self) -> str:
        return self._session().history[-1]["content"] if self.can_take_back() else ""

    def regenerate(self, on_text: Callable[[str], None], stop) -> Outcome:
        """The last prompt answered again with a new seed. The replaced reply leaves the model's history
        and is kept in a `regenerate` record; the prompt and the new reply follow as message records."""
        prompt, replaced = self._take_back()
        session = self._session()
        self._appliance().record("regenerate", replaced=replaced, prompt=prompt, after_messages=len(session.history))
        settings = session.settings
        session.settings = replace(settings, seed=secrets.randbelow(2**31))
        try:
            return self.reply(prompt, on_text, stop)
        finally:
            session.settings = settings

    def edit(self, text: str, on_text: Callable[[str], None], stop) -> Outcome:
        """`text` sent in place of the last prompt: that exchange leaves the model's history (an `edit`
        record keeps both its texts; its message records stay in the journal), then `text` is answered."""
        prompt, replaced_reply = self._take_back()
        self._appliance().record(
            "edit", replaced=prompt, replaced_reply=replaced_reply, after_messages=len(self._session().history)
        )
        return self.reply(text, on_text, stop)

    def _take_back(self) -> tuple[str, str]:
        if not self.can_take_back():
            raise NotFound("no reply yet in this session to take back")
        return self._session().drop_last_exchange()

    # -- erase -----------------------------------------------------------------------------------

    def erase(self, kind: str) -> list[str]:
        """Crypto-erase every installed version of the loaded item of `kind`; everything is switched off and let go
        first, that one zeroed."""
        self._switch_off()
        return self._appliance().erase(kind)

    def erase_journal(self) -> list[str]:
        """Every journal session, this one included; a fresh session then takes its place."""
        erased = self._appliance().erase_journal()
        self.new_session()
        return erased

    # -- past sessions ---------------------------------------------------------------------------

    def export(self, session_id: str, directory: Path) -> Path:
        out = directory / f"{session_id}.md"
        atomic_write(out, markdown_transcript(session_id, read_session(self.vault, session_id)).encode())
        return out

    def close(self) -> None:
        self.lock()
        self.audit.close()
