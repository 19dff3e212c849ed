"""The kill-switch: a pid file for the running appliance, and the signals that stop it.

    appliance kill          -> SIGTERM  : stop, switch the overlay off, zero keys, journal `kill`, exit 4
    appliance kill --wipe   -> SIGUSR1  : the same, and crypto-erase every overlay before exiting

Rules:
- The signal handler only sets `cancel` (a threading.Event the decode loop checks between tokens)
  and remembers whether a wipe was asked for. It never raises: an exception thrown into the middle
  of a journal append could leave half a record. The command polls `check()` at safe points and
  the decode loop stops within one token (a few ms), well inside the 100 ms budget.
- Whoever holds keys or decrypted weights registers a zeroing callback with `on_kill`; `Killed`
  handling runs them all, so nothing decrypted outlives the kill.
- Exit code of a killed command: 4 (locked: the passphrase is needed to come back).
- One long-running appliance per state dir: the pid file is created exclusively (link(2) of a
  written temp file, so readers never see it half-written); a stale one (dead pid) is replaced.
"""

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import Locked, NotFound, Refused
from ..fsutil import fsync_dir

PID_FILE = "appliance.pid"
KILL_SIGNAL = signal.SIGTERM
WIPE_SIGNAL = signal.SIGUSR1
WIPE_POLICY = "kill_wipes_overlays"  # vault setting: every kill is a wipe


class Killed(Locked):
    """The kill-switch fired. Raised at a safe point after the signal; exit 4."""

    def __init__(self, wipe: bool):
        super().__init__("stopped by the kill-switch: keys zeroed, appliance locked" + (" (wipe requested)" if wipe else ""))
        self.wipe = wipe


def pid_path(home: Path) -> Path:
    return home / PID_FILE


def running_pid(home: Path) -> int | None:
    """The pid in the pid file if that process is alive and is an appliance; else None."""
    try:
        pid = int(pid_path(home).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"appliance" in cmdline else None


class KillSwitch:
    """Context manager for long-running commands: pid file, signal handlers, the cancel event."""

    def __init__(self, home: Path):
        self.home = home
        self.cancel = threading.Event()
        self.wipe = False
        self._callbacks: list[Callable[[], None]] = []
        self._previous: dict = {}

    def __enter__(self) -> "KillSwitch":
        self._claim_pid_file()
        for sig in (KILL_SIGNAL, WIPE_SIGNAL):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if running_pid(self.home) == os.getpid():
            pid_path(self.home).unlink(missing_ok=True)

    def on_kill(self, callback: Callable[[], None]) -> None:
        """Run `callback` (zero a buffer, switch the overlay off, ...) when the kill is handled."""
        self._callbacks.append(callback)

    def check(self) -> None:
        """Raise Killed if the switch fired. Call between steps; `cancel` covers the decode loop."""
        if self.cancel.is_set():
            raise Killed(self.wipe)

    def run_callbacks(self) -> None:
        for callback in self._callbacks:
            callback()

    def _handle(self, signum, _frame) -> None:
        self.wipe = self.wipe or signum == WIPE_SIGNAL
        self.cancel.set()

    def _claim_pid_file(self) -> None:
        path = pid_path(self.home)
        tmp = path.with_name(f".{PID_FILE}.{os.getpid()}")
        try:
            tmp.write_text(f"{os.getpid()}\n")  # inside: a full disk must not leave an empty temp behind
            for _ in range(2):
                try:
                    os.link(tmp, path)
                    fsync_dir(self.home)
                    return
                except FileExistsError:
                    other = running_pid(self.home)
                    if other is not None:
                        raise Refused(f"another appliance process is running (pid {other}): `appliance kill` stops it") from None
                    path.unlink(missing_ok=True)  # stale: its process is gone
            raise Refused(f"cannot claim {path}")
        finally:
            tmp.unlink(missing_ok=True)


def signal_running(home: Path, wipe: bool) -> int:
    """Send the kill (or wipe) signal to the running appliance; returns its pid."""
    pid = running_pid(home)
    if pid is None:
        raise NotFound("no running appliance (no live pid file)")
    os.kill(pid, WIPE_SIGNAL if wipe else KILL_SIGNAL)
    return pid
