"""What the chat does, free of widgets: the same guarantees as `appliance ask`, held open interactively.

One `ChatCore` per running UI. Locked, it holds only the verified base model loaded in llama.cpp
(public, verified against its pin before the UI starts). `unlock` opens the vault, arms the
kill-switch (pid file + signals: `appliance kill` from another terminal reaches the UI), loads the
active overlay re-verified, and starts a journal session. Every message is journalled with its
provenance, every overlay switch with its moment. `kill` and `lock` zero what they can and return
to the locked state; the UI then shows the unlock screen.

Threads: a reply is generated on a worker thread while the UI thread may switch the overlay, so
journal appends are serialised by a lock (a `Journal` is not thread-safe).
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..emergency import handle_kill
from ..errors import ApplianceError, NotFound
from ..fsutil import atomic_write
from ..journal import Journal, Report, check, provenance, read, sessions
from ..journal.transcript import markdown_transcript
from ..runtime.sampler import SamplingSettings
from ..runtime.session import Reply, Runtime, Session
from ..store import ActiveOverlay, Base, load_active_overlay
from ..trust.builtin import VerifiedModel
from ..vault import Vault
from ..vault.erase import erase_journal, erase_overlay
from ..vault.killswitch import Killed, KillSwitch
from .divergence import AuditDecoder, Divergence


@dataclass
class Outcome:
    """A finished reply, as the UI shows it."""

    reply: Reply
    divergence: Optional[Divergence]


class ChatCore:
    def __init__(
        self,
        home: Path,
        model: VerifiedModel,
        *,
        settings: SamplingSettings = SamplingSettings(),
        max_tokens: int = 256,
        system_prompt: Optional[str] = None,
        overlay_loader: Optional[Callable[[Vault], ActiveOverlay]] = None,
        n_ctx: int = 4096,
        n_threads: Optional[int] = None,
    ):
        self.home, self.model = home, model
        self.settings, self.max_tokens, self.system_prompt = settings, max_tokens, system_prompt
        # Tests inject an overlay here; the product always decrypts the store's active one, re-verified.
        self._load_overlay = overlay_loader or (lambda vault: load_active_overlay(Base(model), vault))
        self.runtime = Runtime(model, n_ctx=n_ctx, n_threads=n_threads)
        self.audit = AuditDecoder.install(self.runtime)
        self.base_prov = provenance.base(model.name, model.sha256, model.version)
        self._lock = threading.Lock()
        self.killswitch: Optional[KillSwitch] = None
        self.vault: Optional[Vault] = None
        self.journal: Optional[Journal] = None
        self.active: Optional[ActiveOverlay] = None
        self.overlay_problem = ""  # why no overlay is loaded, when one should be
        self.session: Optional[Session] = None
        # tokens/s of the last overlay-on reply, without (False) and with (True) the meter: the help shows its cost
        self.overlay_speed: dict[bool, float] = {}

    # -- locked / unlocked ------------------------------------------------------------

    @property
    def unlocked(self) -> bool:
        return self.vault is not None

    def vault_state(self) -> str:
        return Vault.state(self.home)

    def create_vault(self, passphrase: bytes) -> None:
        """First run (or after `erase all`): a new vault, opened as it is made (one key derivation)."""
        self._open(Vault.create(self.home, passphrase))

    def unlock(self, passphrase: bytes) -> None:
        """Open the vault (exit-4 errors propagate unchanged), arm the kill-switch, start a session."""
        self._open(Vault.unlock(self.home, passphrase))

    def _open(self, vault: Vault) -> None:
        """Must run on the main thread: the kill-switch installs signal handlers."""
        killswitch = KillSwitch(self.home)
        try:
            killswitch.__enter__()
        except BaseException:
            vault.zeroize()
            raise
        self.vault, self.killswitch = vault, killswitch
        killswitch.on_kill(self._drop_overlay)
        try:
            self._load()
            self.new_session()
        except BaseException:  # e.g. the journal cannot be written: stay locked rather than chat unjournalled
            self.lock()
            raise

    def _load(self) -> None:
        try:
            self.active, self.overlay_problem = self._load_overlay(self.vault), ""
        except NotFound:
            self.active, self.overlay_problem = None, ""
        except ApplianceError as e:  # refused by verification, or erased: chat on the base alone, and say why
            self.active, self.overlay_problem = None, str(e)

    def new_session(self) -> None:
        """A fresh journal session and an empty history; the overlay keeps its switch position."""
        on = self.session.overlay_on if self.session else self.active is not None
        self._close_journal()
        self.journal = Journal.create(self.vault)
        self.runtime.decoder.reset()
        self.session = Session(self.runtime, overlay=self.active.overlay if self.active else None,
                               system_prompt=self.system_prompt, settings=self.settings)
        self.session.set_overlay(on and self.active is not None)

    def set_system_prompt(self, text: Optional[str]) -> None:
        """This session's only (a new session starts from `--system` again); the next reply is conditioned on it."""
        self.session.system_prompt = text

    def lock(self) -> None:
        """Back to the locked state: overlay dropped and zeroed, journal and vault keys zeroed, KV cache cleared."""
        self._drop_overlay()
        self._close_journal()
        self.runtime.decoder.reset()
        if self.vault is not None:
            self.vault.zeroize()
        if self.killswitch is not None:
            self.killswitch.__exit__(None, None, None)
        self.vault = self.killswitch = self.session = None

    def kill(self) -> None:
        """The kill key, or `appliance kill` from elsewhere. The caller has stopped the reply first."""
        self.killswitch.cancel.set()
        try:
            with self._lock:
                handle_kill(Killed(self.killswitch.wipe), self.killswitch, self.vault, self.journal)
        finally:
            self.lock()

    def kill_requested(self) -> bool:
        return self.killswitch is not None and self.killswitch.cancel.is_set()

    def _drop_overlay(self) -> None:
        if self.session is not None:
            self.session.set_overlay(False)
            self.session.overlay = None
        if self.active is not None:
            self.active.zeroize()
            self.active = None

    def _close_journal(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    # -- the overlay switch and the meter ------------------------------------------------------

    def overlay_prov(self, on: bool) -> Optional[dict]:
        if self.active is None:
            return None
        return self.active.provenance.journal_record(on)

    def toggle(self) -> bool:
        """O(1) flip (the next reply re-prefills in the new state); journalled with its moment."""
        on = self.session.toggle()
        self._append("overlay-toggle", on=on, overlay=self.overlay_prov(on), after_messages=len(self.session.history))
        return on

    def set_audit(self, on: bool) -> None:
        self.audit.enabled = on

    def audit_cost(self) -> str:
        """The meter's measured cost in this run, once an overlay-on reply was made both ways."""
        if len(self.overlay_speed) < 2:
            return "This run has not yet measured it: make one overlay-ON reply with the meter off and one with it on."
        off, on = self.overlay_speed[False], self.overlay_speed[True]
        return f"Measured in this run: {off:.1f} tok/s without the meter, {on:.1f} tok/s with it ({on / off:.0%})."

    # -- a reply (on a worker thread) ----------------------------------------------------------

    def reply(self, text: str, on_text: Callable[[str], None], stop: threading.Event) -> Outcome:
        prov = {"base": self.base_prov, "overlay": self.overlay_prov(self.session.overlay_on), **self.session.conditioning()}
        self._append("message", **provenance.message("user", text, **prov))
        reply = self.session.generate(text, max_tokens=self.max_tokens, on_text=on_text, cancel=stop)
        divergence = self.audit.divergence()
        if reply.overlay_on and reply.tokens:
            self.overlay_speed[divergence is not None] = reply.tokens_per_second
        self._append("message", **provenance.message(
            "assistant", reply.text, **prov, divergence=divergence and divergence.as_dict(),
            finish=reply.finish, tokens=len(reply.tokens), tokens_per_second=round(reply.tokens_per_second, 1)))
        return Outcome(reply, divergence)

    def _append(self, kind: str, **fields) -> None:
        with self._lock:
            self.journal.append(kind, **fields)

    # -- erase -----------------------------------------------------------------------------------

    def erase_overlay(self) -> list[str]:
        """Crypto-erase every installed version of the loaded overlay; it is switched off and zeroed first."""
        name = self.active.provenance.name
        self._drop_overlay()
        return erase_overlay(self.vault, name)

    def erase_journal(self) -> list[str]:
        """Every journal session, this one included; a fresh session then takes its place."""
        with self._lock:
            self._close_journal()
            erased = erase_journal(self.vault)
        self.new_session()
        return erased

    # -- past sessions ---------------------------------------------------------------------------

    def sessions(self) -> list[str]:
        return sessions(self.vault)

    def check(self, session_id: str) -> Report:
        return check(self.vault, session_id)

    def read(self, session_id: str) -> list[dict]:
        return read(self.vault, session_id)

    def export(self, session_id: str, directory: Path) -> Path:
        out = directory / f"{session_id}.md"
        atomic_write(out, markdown_transcript(session_id, self.read(session_id)).encode())
        return out

    def close(self) -> None:
        self.lock()
        self.audit.close()
        self.runtime.close()
