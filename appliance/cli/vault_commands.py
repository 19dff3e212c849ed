"""Journal, erase, passphrase and kill commands (the passphrase and unlocking: `unlocking.py`)."""

import json
import os
import time
from pathlib import Path
from typing import Optional

import click

from .. import paths, state
from ..emergency import handle_kill_in_new_session
from ..erase import ERASE_JOURNAL_PHRASE, erase_everything, erase_item, erase_journal
from ..errors import EnvironmentRefused, Erased, EraseNotProven, NotConfirmed
from ..fsutil import atomic_write
from ..journal import JournalBroken, read_session, sessions, verify_session
from ..journal.listing import PAGE, Listed, Listing
from ..journal.search import Match, search
from ..journal.session_files import JOURNAL_KEYS
from ..journal.transcript import markdown_transcript, provenance_line
from ..trust.kinds import KINDS
from ..vault import Vault, VaultRolledBack, zeroize
from ..vault.killswitch import KILL_GRACE_SECONDS, WIPE_POLICY, Killed, KillSwitch, running_pid, stop_running
from .output import say, warn
from .unlocking import killable_vault, passphrase_option, read_passphrase, unlocked, warn_if_weak

# -- logs ------------------------------------------------------------------------------


@click.group()
def logs() -> None:
    """The encrypted session journal: list, show, verify, search, export."""


def _listed(row: Listed) -> str:
    if row.summary is None:
        return f"{row.session_id}  {row.trouble}"
    client = f"  [client {row.summary.client}]" if row.summary.client else ""
    trouble = f"{row.trouble}  " if row.trouble else ""
    return f"{row.session_id}  {row.records:4d} records  {trouble}{row.summary.first[:48]}{client}"


@logs.command("list")
@click.option(
    "--page", type=click.IntRange(min=1), default=1, show_default=True, help=f"Which page of {PAGE} sessions, the newest first."
)
@click.option("--all", "every", is_flag=True, help="Every session, the newest first.")
@passphrase_option
def logs_list(page: int, every: bool, passphrase_file: Optional[Path]) -> None:
    """The newest sessions, a page of 50 (`--page N` the next ones, `--all` every one): record count, first message.

    Each session's summary comes from the journal's sealed index; `logs verify` checks the sessions themselves.
    """
    with unlocked(passphrase_file) as vault, vault.pinned(), Listing(vault) as listing:
        ids = sessions(vault)[::-1]
        shown = ids if every else ids[(page - 1) * PAGE : page * PAGE]
        for row in listing.rows(shown):
            say(_listed(row))
    if listing.unopened:
        warn(
            f"note: {listing.unopened} parts of the journal's index did not open (damaged, or from another vault): those sessions were read from the journal"
        )
    if not every and len(ids) > page * PAGE:
        warn(
            f"sessions {(page - 1) * PAGE + 1}-{(page - 1) * PAGE + len(shown)} of {len(ids)}, newest first: `--page {page + 1}` for the next {PAGE}, `--all` for every one"
        )
    elif not shown and ids:
        warn(f"page {page} is past the last: {len(ids)} sessions make {-(-len(ids) // PAGE)} pages")


@logs.command("show")
@click.argument("session_id")
@passphrase_option
def logs_show(session_id: str, passphrase_file: Optional[Path]) -> None:
    """Print one verified session, record by record, with provenance."""
    with unlocked(passphrase_file) as vault:
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
@click.option(
    "--generation",
    "noted",
    type=click.IntRange(min=0),
    default=None,
    help="The vault generation you noted (`status`): a lower one now is an older copy of the state put back (exit 3).",
)
@passphrase_option
def logs_verify(session_id: Optional[str], noted: Optional[int], passphrase_file: Optional[Path]) -> None:
    """Check the hash chain, every record's authenticity and the sealed heads. Exit 3 names the first break."""
    broken = []
    with unlocked(passphrase_file) as vault, vault.pinned():
        generation, written = vault.generation()
        if noted is not None and generation < noted:
            raise VaultRolledBack(generation, noted, "you noted")
        for sid in [session_id] if session_id else sessions(vault):
            try:
                report = verify_session(vault, sid)
            except Erased as e:  # listed by its file: the ciphertext an interrupted erase left
                if session_id:
                    raise
                say(f"erased  {sid}: {e}; its file is ciphertext without a key")
                continue
            if report.never_written:
                say(f"ok      {sid}: never written (its key was recorded, then the start was interrupted)")
            elif report.broken_at is None:
                note = (
                    f" ({report.unsealed} written after the last sealed head: an interrupted append)" if report.unsealed else ""
                )
                say(f"ok      {sid}: {len(report.records)} records{note}")
            else:
                say(f"BROKEN  {sid}: {report.broken_at}")
                broken.append((report.session_id, report.broken_at))
    say(f"vault   generation {generation}, written {written}")
    if broken:
        raise JournalBroken(*broken[0])


@logs.command("search")
@click.argument("text")
@passphrase_option
def logs_search(text: str, passphrase_file: Optional[Path]) -> None:
    """Every record holding TEXT (any case), session by session, decrypted in memory only: no index is written."""
    found, searched, in_sessions = 0, 0, set()
    with unlocked(passphrase_file) as vault, vault.pinned():
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
    with unlocked(passphrase_file) as vault:
        records = read_session(vault, session_id)
    if fmt == "jsonl":
        text = "".join(json.dumps({"record": n, **r}) + "\n" for n, r in enumerate(records, 1))
    else:
        text = markdown_transcript(session_id, records)
    _write_export(out, text.encode())
    say(f"exported {len(records)} records of {session_id} to {out}")


def _write_export(out: Path, data: bytes) -> None:
    """A regular file (new, or through a link to one) is replaced atomically, mode 0600; anything else that
    exists there (a terminal, a pipe, `/dev/stdout`) is written through, never replaced by a file."""
    try:
        if out.exists() and not out.is_file():  # both through links
            with open(out, "wb") as f:
                f.write(data)
        else:
            atomic_write(Path(os.path.realpath(out)), data)  # a link stays a link
    except OSError as e:
        raise EnvironmentRefused(f"cannot write {out} ({e.strerror}): nothing was exported") from None


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


def erase_every_version(kind: str, name: str, yes: bool, passphrase_file: Optional[Path]) -> None:
    """`erase overlay|control|base NAME`: confirm, crypto-erase every installed version, say so, prove it."""
    with unlocked(passphrase_file) as vault:
        _confirm(name, f"{KINDS[kind].label} {name} (every installed version)", yes)
        t0 = time.perf_counter()
        key_ids = erase_item(vault, kind, name)
        say(f"destroyed: data keys of {', '.join(key_ids)} ({time.perf_counter() - t0:.3f} s)")
        _prove(vault, key_ids)


@erase.command("overlay")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Skip the typed confirmation.")
@passphrase_option
def erase_overlay_cmd(name: str, yes: bool, passphrase_file: Optional[Path]) -> None:
    """Every installed version of overlay NAME."""
    erase_every_version("overlay", name, yes, passphrase_file)


@erase.command("control")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Skip the typed confirmation.")
@passphrase_option
def erase_control_cmd(name: str, yes: bool, passphrase_file: Optional[Path]) -> None:
    """Every installed version of control vector NAME."""
    erase_every_version("control-vector", name, yes, passphrase_file)


@erase.command("logs")
@click.option("--yes", is_flag=True, help="Skip the typed confirmation.")
@passphrase_option
def erase_logs_cmd(yes: bool, passphrase_file: Optional[Path]) -> None:
    """Every journal session."""
    with unlocked(passphrase_file) as vault:
        _confirm(ERASE_JOURNAL_PHRASE, "every journal session", yes)
        t0 = time.perf_counter()
        recorded = vault.key_ids(JOURNAL_KEYS)
        count = len(recorded)
        key_ids = erase_journal(vault)
        seconds = time.perf_counter() - t0
        if not key_ids:
            say(f"finished an interrupted erase: the journal files its keys no longer open are removed ({seconds:.3f} s)")
            return
        say(f"destroyed: {', '.join(key_ids)}: the keys of {count} journal sessions, then their files ({seconds:.3f} s)")
        _prove(vault, [*key_ids, recorded[-1]] if recorded[-1] not in key_ids else key_ids)  # and the newest session's


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
    """Change the passphrase: a new key-encryption key and master key, the data keys rewrapped (the data untouched)."""
    home = paths.state_dir()
    state.require_initialised(home)
    old, new = read_passphrase(passphrase_file, prompt="Current passphrase"), bytearray()
    try:
        new = read_passphrase(new_passphrase_file, confirm=True, prompt="New passphrase", use_env=False)
        warn_if_weak(new)
        with KillSwitch(home):  # found by `kill` while it holds the master key, as every command that unlocks is
            Vault.change_passphrase(home, old, new)
    finally:
        zeroize(old)
        zeroize(new)
    say("passphrase changed (new key-encryption key and master key, data keys rewrapped; data untouched)")


@click.command()
@click.option("--wipe", is_flag=True, help="Also crypto-erase every overlay, control vector and imported base.")
@passphrase_option
def kill(wipe: bool, passphrase_file: Optional[Path]) -> None:
    """Stop the running appliance now: generation stops, keys are zeroed, a `kill` record is written.

    The killed command exits with code 4 (locked). One that has not confirmed within the grace
    time (docs/procedures.md, section 7) is ended with SIGKILL. With --wipe, where nothing runs or
    it did not wipe, the wipe is done here (the passphrase is needed for that).
    """
    home = paths.state_dir()
    state.require_initialised(home)
    if running_pid(home) is None and wipe:
        say(f"no running appliance; wiped overlays, control vectors and bases: {_wipe_here(passphrase_file)}")
        return
    stopped = stop_running(home, wipe)
    if stopped.sigkilled:
        warn(f"appliance pid {stopped.pid} did not confirm the kill within {KILL_GRACE_SECONDS:.0f} s: ended with SIGKILL")
    elif not stopped.confirmed:
        warn(f"appliance pid {stopped.pid} ended without handling the kill")
    if not stopped.confirmed and not wipe:
        warn("note: so it wrote no `kill` record and applied no kill policy; `appliance kill --wipe` wipes")
    said = f"stopped appliance pid {stopped.pid} in {stopped.seconds:.2f} s"
    if wipe and stopped.confirmed != "wiped":
        say(f"{said}; wiped here: {_wipe_here(passphrase_file)}")
        return
    say(said + (", and it wiped every overlay, control vector and base" if stopped.confirmed == "wiped" else ""))


def _wipe_here(passphrase_file: Optional[Path]) -> str:
    """The kill's wipe done by `kill` itself; the key ids it erased, for the output."""
    with killable_vault(passphrase_file) as (vault, killswitch):
        key_ids = handle_kill_in_new_session(Killed(wipe=True), killswitch, vault)
    return ", ".join(key_ids) or "none installed"


@click.command("kill-policy")
@click.argument("policy", type=click.Choice(["wipe", "lock"]), required=False)
@passphrase_option
def kill_policy(policy: Optional[str], passphrase_file: Optional[Path]) -> None:
    """Show or set what every kill does: `lock` (default) or `wipe` (also crypto-erase the overlays)."""
    with unlocked(passphrase_file) as vault:
        if policy is not None:
            vault.set_setting(WIPE_POLICY, policy == "wipe")
        say(f"kill policy: {'wipe' if vault.setting(WIPE_POLICY, False) else 'lock'}")
