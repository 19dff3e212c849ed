"""The `journal` section of the bench: what the journal and the vault cost as the history grows.

One row group per size of the journal (sessions of 4 messages, the recipe of `journal_search`): a
state dir of that many sessions is built in process once, through `Journal.create`/`append`, and
kept under bench/out/journal/ between runs; each run measures on a copy of it. A size whose
vault.json would pass its bound (`disk.MAX_VAULT_FILE`: each session's head is taken into
vault.json) is not built: its row says what the built sizes measured per session.
"""

import shutil
import tempfile
import time
from pathlib import Path

from appliance import state
from appliance.erase import erase_journal
from appliance.journal import Journal, provenance, sessions, verify_session
from appliance.journal.search import Match, search
from appliance.runtime.sampler import GREEDY
from appliance.vault import Vault
from appliance.vault.disk import MAX_VAULT_FILE
from appliance.vault.vault_file import vault_path

CACHE = Path(__file__).resolve().parent / "out" / "journal"
PASSPHRASE = b"bench passphrase"
PROVENANCE = {"base": provenance.base("bench", "0" * 64, 1), "overlay": None, "settings": GREEDY.as_dict(), "system_prompt": None}
FIRST_PAGE = 50  # the sessions `logs list` shows first (a screenful)
APPENDS = 50  # appends timed at each size


def _session(vault: Vault, i: int) -> None:
    journal = Journal.create(vault)
    for n in range(4):
        word = " albatross" if n == 3 and i % 10 == 0 else ""
        text = f"message {n} of session {i}{word} " * 8
        journal.append("message", **provenance.message("user" if n % 2 == 0 else "assistant", text, **PROVENANCE))
    journal.close()


def _built(n_sessions: int) -> Path:
    """The cached state dir of `n_sessions` sessions, built from the largest smaller one where there is one."""
    home = CACHE / str(n_sessions)
    if (home / "done").exists():
        return home
    smaller = sorted(int(p.name) for p in CACHE.glob("*") if (p / "done").exists() and int(p.name) < n_sessions)
    shutil.rmtree(home, ignore_errors=True)
    if smaller:
        shutil.copytree(CACHE / str(smaller[-1]), home)
        (home / "done").unlink()
        start = smaller[-1]
    else:
        state.initialise(home)
        Vault.create(home, PASSPHRASE).zeroize()
        start = 0
    with Vault.unlock(home, PASSPHRASE) as vault:
        for i in range(start, n_sessions):
            _session(vault, i)
    (home / "done").write_text("")
    return home


def _ms(values: list[float], q: float = 0.5) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3:.2f}"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _list(vault: Vault, limit: int | None) -> None:
    """What `logs list` does for each session it shows: verify it, newest first, against one view of the vault."""
    with vault.pinned():
        for sid in sorted(sessions(vault), reverse=True)[:limit]:
            verify_session(vault, sid)


def _vault_bytes_a_session() -> float | None:
    """vault.json's size a session, in the largest journal built so far (of 100 sessions or more)."""
    built = sorted(int(p.name) for p in CACHE.glob("*") if (p / "done").exists() and int(p.name) >= 100)
    return vault_path(CACHE / str(built[-1])).stat().st_size / built[-1] if built else None


def journal_rows(n_sessions: int) -> list[tuple]:
    """The journal and the vault at one size of the history (built once, cached under bench/out/journal/)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    what = f"{n_sessions} sessions"
    per_session = _vault_bytes_a_session()
    if per_session and n_sessions * per_session > MAX_VAULT_FILE:
        need = n_sessions * per_session / (1 << 20)
        return [
            (f"{what}: not built: vault.json would need ~{need:.0f} MiB, over its {MAX_VAULT_FILE >> 20} MiB bound", "", "", "")
        ]
    cached = _built(n_sessions)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(cached, home)
        unlock = _timed(lambda: Vault.unlock(home, PASSPHRASE).zeroize())
        table = vault_path(home).stat().st_size
        with Vault.unlock(home, PASSPHRASE) as vault:
            creates = []
            for _ in range(5):
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
            total = len(sessions(vault))
            first = _timed(lambda: _list(vault, FIRST_PAGE))
            every = _timed(lambda: _list(vault, None))
            found = [0]
            with vault.pinned():  # as `logs search`
                searched = _timed(lambda: found.__setitem__(0, sum(isinstance(h, Match) for h in search(vault, "ALBATROSS"))))
            if found[0] != (n_sessions + 9) // 10:
                raise RuntimeError(f"search found {found[0]} matches in {n_sessions} sessions")
            erase = _timed(lambda: erase_journal(vault))
    return [
        (f"{what}: journal append, median ms", _ms(appends), "", "<= 2 ms"),
        (f"{what}: journal append, p99 ms", _ms(appends, 0.99), "", "reported"),
        (f"{what}: new session, median ms", _ms(creates), "", "<= 10 ms"),
        (f"{what}: logs list, its newest {FIRST_PAGE} sessions shown, ms", f"{first * 1e3:.0f}", "", "<= 500 ms"),
        (f"{what}: logs list, all (F4 opens after as long), s", f"{every:.2f}", "", "reported"),
        (f"{what}: logs search, sessions/s", f"{total / searched:.0f}", f"{total / searched:.0f}", ">= 1000"),
        (f"{what}: logs verify, ms a session", f"{every / total * 1e3:.2f}", "", "<= 2 ms"),
        (f"{what}: unlock, ms (this build's KDF included)", f"{unlock * 1e3:.0f}", "", "<= 1000 ms"),
        (f"{what}: erase logs, ms", f"{erase * 1e3:.0f}", "", "reported"),
        (f"{what}: vault.json, KiB", f"{table / 1024:.0f}", "", "reported"),
    ]
