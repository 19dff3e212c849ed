"""The kill-switch: a pid file for the running appliance, the signals that stop it, and the floor under them.

    appliance kill          -> SIGTERM  : stop, switch the overlay off, zero keys, journal `kill`, exit 4
    appliance kill --wipe   -> SIGUSR1  : the same, and crypto-erase every overlay before exiting

Rules:
- Every command that holds an unlocked vault holds the pid file's lock for as long as it does
  (`cli/unlocking.py` arms one switch per command; the chat arms one per unlock), so `kill` finds it.
- The signal handler only sets `cancel` (a threading.Event) and remembers whether a wipe was asked
  for. It never raises: an exception thrown into the middle of a journal append could leave half a
  record. The decode loop reads `cancel` between tokens and llama.cpp after every graph node of a
  prefill or slow step (`LlamaEngine.stop_on`; a step quicker than 40 ms reads it once, before it),
  so a prefill stops too; `check()` raises `Killed` at safe
  points; whatever holds the vault handles a kill it was not stopped by when it ends.
- Whoever holds keys or decrypted weights registers a zeroing callback with `on_kill`; `Killed`
  handling runs them all, so nothing decrypted outlives the kill.
- Exit code of a killed command: 4 (locked: the passphrase is needed to come back).
- One long-running appliance per state dir, known by a lock and not by its name: it holds an
  exclusive `flock` on the pid file for as long as it runs, and writes its pid there. A pid file
  that nobody holds the lock on is stale, whatever process has that pid now. `kill` signals the
  pid only while the lock is held, through a pidfd taken before that check, so a pid reused in
  between is never signalled.
- The floor: a process confirms a kill by writing how it handled it in the pid file (`confirm`)
  and releasing the lock, after its keys are zeroed and its wipe is done. One that has not within
  `KILL_GRACE_SECONDS` (stopped, stuck in C code) is sent SIGKILL through the same pidfd
  (`stop_running`); one that did not confirm, however it ended, did not wipe, and `kill --wipe`
  then does the wipe itself.
"""

import fcntl
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import Locked, NotFound, Refused

PID_FILE = "appliance.pid"
CLAIM_ATTEMPTS = 50  # a reader's shared lock lasts microseconds: retried, never taken for a running appliance
KILL_SIGNAL = signal.SIGTERM
WIPE_SIGNAL = signal.SIGUSR1
WIPE_POLICY = "kill_wipes_overlays"  # vault setting: every kill is a wipe
KILL_GRACE_SECONDS = 2.0  # for the process to confirm (it stops within one graph node) before SIGKILL
GONE_SECONDS = 10.0  # for a SIGKILLed process to end (one in uninterruptible sleep waits for its I/O)


class Killed(Locked):
    """The kill-switch fired. Raised at a safe point after the signal; exit 4."""

    def __init__(self, wipe: bool):
        super().__init__("stopped by the kill-switch: keys zeroed, appliance locked" + (" (wipe requested)" if wipe else ""))
        self.wipe = wipe
        self.wiped: list[str] = []  # vault key ids the kill's wipe erased, once it was handled


class AlreadyRunning(Refused):
    """Another appliance process holds the pid file of this state dir: one at a time (`appliance kill` stops it)."""


def pid_path(home: Path) -> Path:
    return home / PID_FILE


def running_pid(home: Path) -> int | None:
    """The pid of the appliance holding the pid file's lock; None when no process holds it."""
    try:
        fd = os.open(pid_path(home), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: the holder wrote its pid there
            return _pid_file(fd)[0]
        return None  # nobody holds it: stale (the shared lock just taken goes with the close)
    finally:
        os.close(fd)


def _pid_file(fd: int) -> tuple[int | None, str]:
    """The pid file's two lines: the holder's pid (None while it is between its lock and its write), and
    how it handled a kill ("" until it has: `KillSwitch.confirm`)."""
    first, _, rest = os.pread(fd, 64, 0).decode("ascii", "replace").partition("\n")
    return (int(first) if first.isdigit() else None), rest.strip()


class KillSwitch:
    """Context manager for every command that holds the vault: pid file, signal handlers, the cancel event."""

    def __init__(self, home: Path):
        self.home = home
        self.cancel = threading.Event()
        self.wipe = False
        self.handled = False  # its zeroing, record and wipe are done (`emergency.handle_kill`)
        self._callbacks: list[Callable[[], None]] = []
        self._previous: dict = {}
        self._pid_fd: int | None = None  # open, and locked, for as long as this appliance runs

    def __enter__(self) -> "KillSwitch":
        # The handlers first: a kill that finds the lock always finds them (the default action of
        # either signal would end the process without its wipe).
        for sig in (KILL_SIGNAL, WIPE_SIGNAL):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            self._claim_pid_file()
        except BaseException:
            self._restore_handlers()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._release_pid_file()  # the lock first, as it was taken last: a kill that finds it finds the handlers
        self._restore_handlers()

    def on_kill(self, callback: Callable[[], None]) -> None:
        """Run `callback` (zero a buffer, switch the overlay off, ...) when the kill is handled."""
        self._callbacks.append(callback)

    def check(self) -> None:
        """Raise Killed if the switch fired. Call between steps; `cancel` covers the decode loop."""
        if self.cancel.is_set():
            raise Killed(self.wipe)

    def confirm(self, wiped: bool) -> None:
        """The kill is handled (zeroed, recorded, wiped if `wiped`): said in the pid file, which `kill` reads once the lock goes."""
        self.handled = True
        if self._pid_fd is not None:
            try:
                os.pwrite(self._pid_fd, f"{os.getpid()}\n{'wiped' if wiped else 'killed'}\n".encode(), 0)
            except OSError:
                pass  # unconfirmed, `kill --wipe` wipes again itself: never less than asked

    def run_callbacks(self) -> None:
        for callback in self._callbacks:
            callback()

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        self.wipe = self.wipe or signum == WIPE_SIGNAL
        self.cancel.set()

    def _claim_pid_file(self) -> None:
        """Lock the pid file (created if absent, taken over if stale) and write this pid into it."""
        path = pid_path(self.home)
        for _ in range(CLAIM_ATTEMPTS):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                other = running_pid(self.home)
                if other is not None:
                    raise AlreadyRunning(
                        f"another appliance process is running (pid {other}): `appliance kill` stops it"
                    ) from None
                time.sleep(0.001)
                continue
            if _same_file(fd, path):
                self._pid_fd = fd
                break
            os.close(fd)  # its holder unlinked it on the way out: claim the one at the path now
        else:
            raise Refused(f"cannot claim {path}: another process holds its lock")
        try:
            data = f"{os.getpid()}\n".encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError:
            self._release_pid_file()  # a full disk leaves no pid file behind, empty or stale
            raise

    def _release_pid_file(self) -> None:
        if self._pid_fd is None:
            return
        path = pid_path(self.home)
        if _same_file(self._pid_fd, path):  # unlinked while the lock is still held: no claimer can take it half-gone
            path.unlink(missing_ok=True)
        os.close(self._pid_fd)
        self._pid_fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


@dataclass(frozen=True)
class Stopped:
    """What `stop_running` did to the running appliance."""

    pid: int
    confirmed: str  # how it said it handled the kill: "killed", "wiped", or "" (it did not: SIGKILLed, or ended without)
    sigkilled: bool
    seconds: float  # from the signal to the lock's release (or, SIGKILLed, to its end)


def stop_running(home: Path, wipe: bool, grace: float = KILL_GRACE_SECONDS) -> Stopped:
    """Signal the running appliance to stop (or wipe), wait for it to release the pid lock, SIGKILL it after `grace`.

    NotFound if none runs; Refused if even SIGKILL has not ended it within GONE_SECONDS.
    """
    gone = NotFound("no running appliance (no process holds the lock on its pid file)")
    try:
        fd = os.open(pid_path(home), os.O_RDONLY)  # kept open: the holder's confirmation is read here once it let go
    except FileNotFoundError:
        raise gone from None
    try:
        pid = running_pid(home)
        if pid is None or not _same_file(fd, pid_path(home)):
            raise gone
        try:
            pidfd = os.pidfd_open(pid)  # this process, even if it exits and its pid is reused
        except ProcessLookupError:
            raise gone from None
        try:
            if running_pid(home) != pid:  # checked after the pidfd: the process it names holds the lock
                raise gone
            try:
                signal.pidfd_send_signal(pidfd, WIPE_SIGNAL if wipe else KILL_SIGNAL)
            except ProcessLookupError:
                raise gone from None
            t0 = time.monotonic()
            sigkilled = not _released(home, pid, pidfd, grace)
            if sigkilled:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it ended just now
                if not _ended(pidfd, GONE_SECONDS):
                    raise Refused(f"appliance pid {pid} did not end within {GONE_SECONDS:.0f} s of SIGKILL")
            return Stopped(pid, _pid_file(fd)[1], sigkilled, time.monotonic() - t0)
        finally:
            os.close(pidfd)
    finally:
        os.close(fd)


def _released(home: Path, pid: int, pidfd: int, seconds: float) -> bool:
    """Whether the process let go of the pid lock (or ended) within `seconds`."""
    deadline = time.monotonic() + seconds
    while running_pid(home) == pid:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        _ended(pidfd, min(0.01, left))  # back at once when it ends; else the lock is looked at every 10 ms
    return True


def _ended(pidfd: int, seconds: float) -> bool:
    """A pidfd polls readable once its process has ended."""
    return bool(select.select([pidfd], [], [], seconds)[0])
