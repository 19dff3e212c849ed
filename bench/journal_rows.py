"""The `journal` section of the bench: what the journal and the vault cost as the history grows.

One row group per size of the journal (sessions of 4 messages, the recipe of `journal_search`): a
state dir of that many sessions is built in process once, through `Journal.create`/`append`, and
kept under bench/out/journal/ between runs (a cache of another layout is built again). The build
makes the product's own files, bytes and crypto by the product's own calls, faster in three ways
(else 100,000 sessions take hours on two shared cores): `os.fsync` is a no-op, it runs on tmpfs
where there is one (/dev/shm, then copied to the cache), and the sessions' heads are collected and
taken into vault.json's table `BATCH` sessions at a time (`Vault._table`, as a write of vault.json
takes heads.json's in) instead of five heads.json writes a session: each session's key file is
written by `key_files.write` and its journal by `Journal.append`, as `Journal.create` would. Each run measures on a copy of the
cache made of hard links (the files it appends to are copied): reads against the built journal,
writes (appends, new sessions, the erase) with the real fsyncs and the real heads.json.
"""

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from appliance import state
from appliance.erase import erase_journal
from appliance.journal import Journal, frames, index, provenance, sessions, verify_session
from appliance.journal.listing import PAGE, Listing
from appliance.journal.search import Match, search
from appliance.journal.session_files import new_session_id, relative_path, session_key_id
from appliance.runtime.sampler import GREEDY
from appliance.utc import now_text
from appliance.vault import Vault, key_files, random_key, zeroize
from appliance.vault.key_files import JOURNAL_KEY_ID
from appliance.vault.slots import Head
from appliance.vault.vault_file import vault_path

CACHE = Path(__file__).resolve().parent / "out" / "journal"
LAYOUT = "key files, heads.json, the index of summaries in id-labelled lines\n"  # what the cache was built with: another is built again
PASSPHRASE = b"bench passphrase"
PROVENANCE = {"base": provenance.base("bench", "0" * 64, 1), "overlay": None, "settings": GREEDY.as_dict(), "system_prompt": None}
APPENDS = 200  # appends timed at each size (the p99 of 200 is their second largest)
CREATES = 20  # new sessions timed at each size
STAGING = Path("/dev/shm")
BATCH = 2000  # sessions whose heads the build takes into vault.json at once


def _messages(journal: Journal, i: int) -> None:
    for n in range(4):
        word = " albatross" if n == 3 and i % 10 == 0 else ""
        text = f"message {n} of session {i}{word} " * 8
        journal.append("message", **provenance.message("user" if n % 2 == 0 else "assistant", text, **PROVENANCE))
    journal.close()


def _session(vault: Vault, i: int) -> None:
    _messages(Journal.create(vault), i)


@contextlib.contextmanager
def _no_fsync() -> Iterator[None]:
    """The build's writes without their fsyncs (the module docstring says why): every other step as the product's."""
    real = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = real


def _build(vault: Vault, start: int, end: int) -> None:
    """Sessions `start`..`end`-1, each as `Journal.create` makes it (its key file, its journal file, its summary in the
    index) and its records by `Journal.append`; their heads taken into vault.json's table `BATCH` sessions at a time."""
    if start == 0:
        _session(vault, 0)  # the whole product path, which also makes the journal key
        start = 1
    journal_key = vault.data_key(JOURNAL_KEY_ID)
    heads: dict[str, Head] = {}

    def collect(key_id: str, seq: int, digest: str) -> None:
        heads[key_id] = Head(seq, digest)

    try:
        for first in range(start, end, BATCH):
            with mock.patch.object(vault, "seal_head", collect):
                for i in range(first, min(end, first + BATCH)):
                    sid, key = new_session_id(), random_key()
                    key_files.write(vault.home, journal_key, session_key_id(sid), key, (relative_path(sid),), now_text())
                    fd = os.open(vault.home / relative_path(sid), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
                    journal = Journal(vault, sid, key, fd, 0, frames.ZERO_HASH, 0)
                    journal._index_key = index.index_key(vault)  # as `Journal.create` sets it
                    _messages(journal, i)
            with vault._table() as table:  # the bench's shortcut past the public API (the module docstring says why)
                table.heads.update(heads)
            heads.clear()
            print(f"  {min(end, first + BATCH)} sessions", flush=True)
    finally:
        zeroize(journal_key)


def _built(n_sessions: int) -> Path:
    """The cached state dir of `n_sessions` sessions, built from the largest smaller one where there is one."""
    home = CACHE / str(n_sessions)
    if (home / "done").exists() and (home / "done").read_text() == LAYOUT:
        return home
    smaller = sorted(
        int(p.name)
        for p in CACHE.glob("*")
        if (p / "done").exists() and (p / "done").read_text() == LAYOUT and int(p.name) < n_sessions
    )
    shutil.rmtree(home, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=STAGING if STAGING.is_dir() else CACHE)) / "home"
    try:
        if smaller:
            shutil.copytree(CACHE / str(smaller[-1]), staging)
            (staging / "done").unlink()
            start = smaller[-1]
        else:
            state.initialise(staging)
            Vault.create(staging, PASSPHRASE).zeroize()
            start = 0
        t = time.perf_counter()
        with _no_fsync(), Vault.unlock(staging, PASSPHRASE) as vault:
            _build(vault, start, n_sessions)
        print(f"  built {n_sessions - start} sessions in {time.perf_counter() - t:.0f} s", flush=True)
        shutil.copytree(staging, home)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    (home / "done").write_text(LAYOUT)
    return home


def _linked_copy(cached: Path, home: Path) -> None:
    """A copy of hard links, but for the one file a run appends to in place (the index's tail)."""
    shutil.copytree(cached, home, copy_function=os.link)
    tail = home / "journal" / index.TAIL_FILE
    if tail.exists():
        tail.unlink()
        shutil.copy2(cached / "journal" / index.TAIL_FILE, tail)


def _ms(values: list[float], q: float = 0.5) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3:.2f}"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _list(vault: Vault, every: bool) -> int:
    """What `logs list` (and F4, for its first page) reads: the newest sessions' summaries, one view of the vault."""
    with vault.pinned(), Listing(vault) as listing:
        ids = sessions(vault)[::-1]
        rows = list(listing.rows(ids if every else ids[:PAGE]))
    if listing.rebuilt:
        raise RuntimeError(f"the index was behind on {listing.rebuilt} sessions")
    return len(rows)


def _verify(vault: Vault) -> int:
    """What `logs verify` reads: every session, against one view of the vault."""
    with vault.pinned():
        ids = sessions(vault)
        if not all(verify_session(vault, sid).ok for sid in ids):
            raise RuntimeError("a built session does not verify")
    return len(ids)


def journal_rows(n_sessions: int) -> list[tuple]:
    """The journal and the vault at one size of the history (built once, cached under bench/out/journal/)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    what = f"{n_sessions} sessions"
    cached = _built(n_sessions)
    with tempfile.TemporaryDirectory(dir=CACHE, ignore_cleanup_errors=True) as tmp:  # the erase unlinks in the background
        home = Path(tmp) / "home"
        _linked_copy(cached, home)
        unlock = _timed(lambda: Vault.unlock(home, PASSPHRASE).zeroize())
        table = vault_path(home).stat().st_size
        with Vault.unlock(home, PASSPHRASE) as vault:
            first = _timed(lambda: _list(vault, False))
            every = _timed(lambda: _list(vault, True))
            verified = _timed(lambda: _verify(vault))
            found = [0]
            with vault.pinned():  # as `logs search`
                searched = _timed(lambda: found.__setitem__(0, sum(isinstance(h, Match) for h in search(vault, "ALBATROSS"))))
            if found[0] != (n_sessions + 9) // 10:
                raise RuntimeError(f"search found {found[0]} matches in {n_sessions} sessions")
            creates = []
            for _ in range(CREATES):
                t = time.perf_counter()
                journal = Journal.create(vault)
                creates.append(time.perf_counter() - t)
                journal.close()
            journal, appends = Journal.create(vault), []
            for n in range(APPENDS):
                t = time.perf_counter()
                journal.append("message", **provenance.message("user", f"append {n} " * 8, **PROVENANCE))
                appends.append(time.perf_counter() - t)
            journal.close()
            erase = _timed(lambda: erase_journal(vault))
    return [
        (f"{what}: journal append, median ms", _ms(appends), "", "<= 2 ms"),
        (f"{what}: journal append, p99 ms", _ms(appends, 0.99), "", "reported"),
        (f"{what}: new session, median ms", _ms(creates), "", "<= 10 ms"),
        (f"{what}: logs list, its newest {PAGE} sessions, ms", f"{first * 1e3:.0f}", "", "<= 500 ms"),
        (f"{what}: F4 opens on the same page (the same read), ms", f"{first * 1e3:.0f}", "", "<= 500 ms"),
        (f"{what}: logs list --all, s", f"{every:.2f}", "", "reported"),
        (f"{what}: logs search, sessions/s", f"{n_sessions / searched:.0f}", f"{n_sessions / searched:.0f}", ">= 1000"),
        (f"{what}: logs verify, ms a session ({verified:.1f} s in all)", f"{verified / n_sessions * 1e3:.2f}", "", "<= 2 ms"),
        (f"{what}: unlock, ms (this build's KDF included)", f"{unlock * 1e3:.0f}", "", "<= 1000 ms"),
        (f"{what}: erase logs, ms", f"{erase * 1e3:.0f}", "", "flat"),
        (f"{what}: vault.json, KiB", f"{table / 1024:.0f}", "", "reported"),
    ]
