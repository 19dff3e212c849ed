"""Journal, erase, passphrase and kill commands (the passphrase and unlocking: `unlocking.py`)."""

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import click

from .. import paths, state
from ..erase import ERASE_JOURNAL_PHRASE, erase_control, erase_everything, erase_installed, erase_journal, erase_overlay
from ..errors import Erased, EraseNotProven, NotConfirmed, NotFound, Refused
from ..fsutil import atomic_write
from ..journal import JournalBroken, Report, read_session, sessions, verify_session
from ..journal.search import Match, search
from ..journal.transcript import markdown_transcript, provenance_line
from ..vault import Vault, zeroize
from ..vault.killswitch import WIPE_POLICY, running_pid, signal_running
from .output import say, warn
from .unlocking import passphrase_option, read_passphrase, unlock

KILL_WAIT_SECONDS = 10.0


# -- logs ------------------------------------------------------------------------------


@click.group()
def logs() -> None:
    """The encrypted session journal: list, show, verify, search, export."""


def _summary(report: Report) -> str:
    status = "ok" if report.ok else f"BROKEN at {report.broken_at}"
    client = f"  [client {report.client()}]" if report.client() else ""
    return f"{report.session_id}  {len(report.records):4d} records  {status}  {report.preview(48)}{client}"


@logs.command("list")
@passphrase_option
def logs_list(passphrase_file: Optional[Path]) -> None:
    """Every journal session with its record count and state."""
    with unlock(passphrase_file) as vault:
        for sid in sessions(vault):
            try:
                say(_summary(verify_session(vault, sid)))
            except (Erased, NotFound) as e:
                say(f"{sid}  unreadable: {e}")


@logs.command("show")
@click.argument("session_id")
@passphrase_option
def logs_show(session_id: str, passphrase_file: Optional[Path]) -> None:
    """Print one verified session, record by record, with provenance."""
    with unlock(passphrase_file) as vault:
        records = read_session(vault, session_id)
    for n, r in enumerate(records, 1):
        say(f"[{n}] {r['time']} {r['kind']}")
        if r["kind"] == "message":
            say(f"    {provenance_line(r)}")
            say(f"    {r['role']}: {r['text']}")
        else:
            say(f"    {json.dumps({k: v for k, v in r.items() if k not in ('kind', 'time')})}")


@logs.command("verify")
@click.argument("session_id", required=False)
@passphrase_option
def logs_verify(session_id: Optional[str], passphrase_file: Optional[Path]) -> None:
    """Check the hash chain, every record's authenticity and the sealed heads. Exit 3 names the first break."""
    broken = []
    with unlock(passphrase_file) as vault:
        for sid in [session_id] if session_id else sessions(vault):
            try:
                report = verify_session(vault, sid)
            except (Erased, NotFound) as e:
                if session_id:
                    raise
                say(f"skip    {sid}: {e}")
                continue
            if report.broken_at is None:
                note = (
                    f" ({report.unsealed} written after the last sealed head: an interrupted append)" if report.unsealed else ""
                )
                say(f"ok      {sid}: {len(report.records)} records{note}")
            else:
                say(f"BROKEN  {sid}: {report.broken_at}")
                broken.append((report.session_id, report.broken_at))
    if broken:
        raise JournalBroken(*broken[0])


@logs.command("search")
@click.argument("text")
@passphrase_option
def logs_search(text: str, passphrase_file: Optional[Path]) -> None:
    """Every record holding TEXT (any case), session by session, decrypted in memory only: no index is written."""
    found, searched, in_sessions = 0, 0, set()
    with unlock(passphrase_file) as vault:
        for hit in search(vault, text):
            if isinstance(hit, Match):
                found += 1
                in_sessions.add(hit.session_id)
                say(f"{hit.session_id}  [{hit.record}] {hit.time} {hit.role} ({hit.provenance}): {hit.snippet}")
            else:
                say(f"skip    {hit.session_id}: {hit.reason}")
        searched = len(sessions(vault))
    say(f"{found} matches in {len(in_sessions)} of {searched} sessions")


@logs.command("export")
@click.argument("session_id")
@click.option("--format", "fmt", type=click.Choice(["md", "jsonl"]), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@passphrase_option
def logs_export(session_id: str, fmt: str, out: Path, passphrase_file: Optional[Path]) -> None:
    """Write one verified session decrypted, as Markdown or JSON lines (mode 0600)."""
    with unlock(passphrase_file) as vault:
        records = read_session(vault, session_id)
    if fmt == "jsonl":
        text = "".join(json.dumps({"record": n, **r}) + "\n" for n, r in enumerate(records, 1))
    else:
        text = markdown_transcript(session_id, records)
    atomic_write(out, text.encode())
    say(f"exported {len(records)} records of {session_id} to {out}")


# -- erase ------------------------------------------------------------------------------


@click.group()
def erase() -> None:
    """Crypto-erase an overlay, a control vector, a base, the journal, or everything (typed confirmation or --yes)."""


def _confirm(phrase: str, what: str, yes: bool) -> None:
    if yes:
        return
    warn(f"This crypto-erases {what}. It cannot be undone.")
    try:
        typed = click.prompt(f'Type "{phrase}" to confirm', default="", show_default=False, err=True)
    except click.Abort:
        typed = ""
    if typed.strip() != phrase:
        raise NotConfirmed("confirmation did not match: nothing was erased")


def _prove(vault: Vault, key_ids: list[str]) -> None:
    for key_id in key_ids:
        try:
            zeroize(vault.data_key(key_id))
        except Erased as e:
            say(f"proof:     decryption of {key_id} fails: {e}")
            continue
        raise EraseNotProven(f"erase of {key_id} did not take: its key is still readable")


def erase_every_version(
    what: str, name: str, erase: Callable[[Vault, str], list[str]], yes: bool, passphrase_file: Optional[Path]
) -> None:
    """`erase overlay|control|base NAME`: confirm, crypto-erase every installed version, say so, prove it."""
    with unlock(passphrase_file) as vault:
        _confirm(name, f"{what} {name} (every installed version)", yes)
        t0 = time.perf_counter()
        key_ids = erase(vault, name)
        say(f"destroyed: data keys of {', '.join(key_ids)} ({time.perf_counter() - t0:.3f} s)")
        _prove(vault, key_ids)


@erase.command("overlay")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Skip the typed confirmation.")
@passphrase_option
def erase_overlay_cmd(name: str, yes: bool, passphrase_file: Optional[Path]) -> None:
    """Every installed version of overlay NAME."""
    erase_every_version("overlay", name, erase_overlay, yes, passphrase_file)


@erase.command("control")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Skip the typed confirmation.")
@passphrase_option
def erase_control_cmd(name: str, yes: bool, passphrase_file: Optional[Path]) -> None:
    """Every installed version of control vector NAME."""
    erase_every_version("control vector", name, erase_control, yes, passphrase_file)


@erase.command("logs")
@click.option("--yes", is_flag=True, help="Skip the typed confirmation.")
@passphrase_option
def erase_logs_cmd(yes: bool, passphrase_file: Optional[Path]) -> None:
    """Every journal session."""
    with unlock(passphrase_file) as vault:
        _confirm(ERASE_JOURNAL_PHRASE, "every journal session", yes)
        t0 = time.perf_counter()
        key_ids = erase_journal(vault)
        say(f"destroyed: data keys of {len(key_ids)} journal sessions, then their files ({time.perf_counter() - t0:.3f} s)")
        _prove(vault, key_ids)


@erase.command("all")
@click.option("--yes", is_flag=True, help="Skip the typed confirmation.")
def erase_all_cmd(yes: bool) -> None:
    """The master key slot: every overlay, every journal session, the settings. Needs no passphrase."""
    home = paths.state_dir()
    state.require_initialised(home)
    _confirm("erase all", "the whole vault (overlays, journal, keys)", yes)
    when = erase_everything(home)
    say(f"destroyed: the master key slot at {when}, then the journal and overlay ciphertext")
    try:
        Vault.unlock(home, b"")
    except Erased as e:
        say(f"proof:     unlocking fails: {e}")
        return
    raise EraseNotProven("erase all did not take: the vault still opens")


# -- passphrase, kill ----------------------------------------------------------------------


@click.command()
@passphrase_option
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the new passphrase from this file (default: a prompt, typed twice).",
)
def passphrase(passphrase_file: Optional[Path], new_passphrase_file: Optional[Path]) -> None:
    """Change the passphrase (rewraps the master key only)."""
    home = paths.state_dir()
    state.require_initialised(home)
    old, new = read_passphrase(passphrase_file, prompt="Current passphrase"), bytearray()
    try:
        new = read_passphrase(new_passphrase_file, confirm=True, prompt="New passphrase", use_env=False)
        Vault.change_passphrase(home, old, new)
    finally:
        zeroize(old)
        zeroize(new)
    say("passphrase changed (master key rewrapped; data keys and data untouched)")


@click.command()
@click.option("--wipe", is_flag=True, help="Also crypto-erase every overlay, control vector and imported base.")
@passphrase_option
def kill(wipe: bool, passphrase_file: Optional[Path]) -> None:
    """Stop the running appliance now: generation stops, keys are zeroed, a `kill` record is written.

    The killed command exits with code 4 (locked). With --wipe and nothing running, the overlays
    are erased here (the passphrase is needed for that).
    """
    home = paths.state_dir()
    state.require_initialised(home)
    if running_pid(home) is None and wipe:
        with unlock(passphrase_file) as vault:
            key_ids = erase_installed(vault)
        say(f"no running appliance; wiped overlays, control vectors and bases: {', '.join(key_ids) or 'none installed'}")
        return
    pid = signal_running(home, wipe)
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while running_pid(home) == pid:
        if time.monotonic() > deadline:
            raise Refused(f"appliance pid {pid} did not stop within {KILL_WAIT_SECONDS:.0f} s")
        time.sleep(0.01)
    say(f"stopped appliance pid {pid}" + (" and wiped its overlays" if wipe else ""))


@click.command("kill-policy")
@click.argument("policy", type=click.Choice(["wipe", "lock"]), required=False)
@passphrase_option
def kill_policy(policy: Optional[str], passphrase_file: Optional[Path]) -> None:
    """Show or set what every kill does: `lock` (default) or `wipe` (also crypto-erase the overlays)."""
    with unlock(passphrase_file) as vault:
        if policy is not None:
            vault.set_setting(WIPE_POLICY, policy == "wipe")
        say(f"kill policy: {'wipe' if vault.setting(WIPE_POLICY, False) else 'lock'}")
