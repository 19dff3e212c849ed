"""Vault, journal, erase and kill commands, and the unlocked appliance `ask` runs in.

Passphrase sources, in order: `--passphrase-file`, `$APPLIANCE_PASSPHRASE_FILE`, a prompt when
stdin is a terminal. With none of them the vault stays locked (exit 4): a script never hangs
on a hidden prompt.
"""

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import click

from .. import paths, state
from ..erase import ERASE_JOURNAL_PHRASE, erase_all_overlays, erase_everything, erase_journal, erase_overlay
from ..errors import Erased, EraseNotProven, NoPassphrase, NotConfirmed, NotFound, Refused, UsageError
from ..fsutil import atomic_write
from ..hardening import lock_secret
from ..journal import JournalBroken, Report, check, read, sessions
from ..journal.search import Match, search
from ..journal.transcript import markdown_transcript, provenance_line
from ..service import UnlockedAppliance
from ..trust.builtin import VerifiedModel
from ..vault import Vault, zeroize
from ..vault.killswitch import WIPE_POLICY, Killed, running_pid, signal_running
from .output import say, warn

PASSPHRASE_ENV = "APPLIANCE_PASSPHRASE_FILE"
MAX_PASSPHRASE_FILE = 4096
KILL_WAIT_SECONDS = 10.0


def passphrase_option(f):
    return click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"Read the passphrase from this file (default: ${PASSPHRASE_ENV}, else a prompt).",
    )(f)


def _has_passphrase_source(path: Optional[Path]) -> bool:
    return bool(path or os.environ.get(PASSPHRASE_ENV) or sys.stdin.isatty())


def read_passphrase(path: Optional[Path], *, confirm: bool = False, prompt: str = "Passphrase", use_env: bool = True) -> bytearray:
    """The passphrase in a locked buffer that the caller zeroizes once the vault has it."""
    source = path or (os.environ.get(PASSPHRASE_ENV) if use_env else None)
    if source:
        return _read_passphrase_file(Path(source))
    if not sys.stdin.isatty():
        raise NoPassphrase(f"the vault is locked and no passphrase was given: use --passphrase-file, ${PASSPHRASE_ENV}, or a terminal")
    typed = bytearray(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True).encode())
    lock_secret(typed)
    return typed  # the prompt's own str cannot be zeroed (docs/procedures.md, section 9)


def _read_passphrase_file(source: Path) -> bytearray:
    """Read into a buffer that is zeroed, never copied into an immutable `bytes`.

    A file that other users may read or write is refused, as ssh refuses such a private key:
    reading it discloses the passphrase, writing it chooses the next one.
    """
    buf = bytearray(MAX_PASSPHRASE_FILE + 1)
    lock_secret(buf)
    try:
        n = _read_private_file(source, buf)
        if n > MAX_PASSPHRASE_FILE:
            raise NoPassphrase(f"the passphrase file {source} is longer than {MAX_PASSPHRASE_FILE} bytes")
        if n and buf[n - 1] == ord("\n"):  # one line ending ("\n", "\r\n" or "\r"), as an editor leaves it
            n -= 1
        if n and buf[n - 1] == ord("\r"):
            n -= 1
        if not n:
            raise NoPassphrase(f"the passphrase file {source} is empty")
        with memoryview(buf) as view:
            passphrase = bytearray(view[:n])
        lock_secret(passphrase)
        return passphrase
    finally:
        zeroize(buf)


def _read_private_file(source: Path, buf: bytearray) -> int:
    """Fill `buf` from `source` (the byte count); Locked if the file is not its owner's alone."""
    try:
        with open(source, "rb", buffering=0) as f, memoryview(buf) as view:
            st = os.fstat(f.fileno())
            if st.st_mode & 0o077:
                raise NoPassphrase(f"the passphrase file {source} is open to other users (mode {st.st_mode & 0o777:03o}): `chmod 600 {source}`")
            if st.st_uid not in (os.geteuid(), 0):
                raise NoPassphrase(f"the passphrase file {source} belongs to another user (uid {st.st_uid})")
            n = 0
            while n < len(buf) and (got := f.readinto(view[n:])):
                n += got
            return n
    except OSError as e:
        raise NoPassphrase(f"cannot read the passphrase file {source}: {e.strerror}") from None


def unlock(passphrase_file: Optional[Path]) -> Vault:
    home = paths.state_dir()
    state.require_initialised(home)
    Vault.require(home)  # no vault, or an erased one: say so before asking for a passphrase
    passphrase = read_passphrase(passphrase_file)
    try:
        return Vault.unlock(home, passphrase)
    finally:
        zeroize(passphrase)


@contextmanager
def unlocked(passphrase_file: Optional[Path]) -> Iterator[Vault]:
    """The unlocked vault for the body of a command; its keys are zeroed however the body ends."""
    vault = unlock(passphrase_file)
    try:
        yield vault
    finally:
        vault.zeroize()


def new_vault_passphrase(home: Path, passphrase_file: Optional[Path], if_needed: bool) -> Optional[bytearray]:
    """`init`'s vault step, asked before anything is created: the new passphrase, or None for no vault now.

    A live vault needs nothing. Non-interactive `init --if-needed` (what ./run calls) without a
    passphrase source skips the vault with a note; plain `init` then refuses (exit 2).
    """
    if Vault.state(home) == "present":
        return None
    if not _has_passphrase_source(passphrase_file):
        if if_needed:
            warn("note: no vault yet; `appliance init` in a terminal (or with --passphrase-file) sets the passphrase")
            return None
        raise UsageError(f"init needs a passphrase: run it in a terminal, or give --passphrase-file / ${PASSPHRASE_ENV}")
    return read_passphrase(passphrase_file, confirm=True, prompt="New passphrase")


def create_vault(home: Path, passphrase: bytearray) -> Vault:
    """The new vault, left unlocked for the caller (one key derivation); the caller zeroizes it.

    The passphrase is zeroed here, once the vault has it.
    """
    replacing = Vault.state(home) == "erased"
    try:
        vault = Vault.create(home, passphrase)
    finally:
        zeroize(passphrase)
    say(f"vault:   created ({home / 'vault'})" + (", replacing the erased one" if replacing else ""))
    return vault


# -- the unlocked appliance that `ask` runs in (`service.UnlockedAppliance`) ------------


@contextmanager
def unlocked_appliance(passphrase_file: Optional[Path], model: VerifiedModel) -> Iterator[UnlockedAppliance]:
    """Vault unlocked, kill-switch armed, keys zeroed on the way out; a kill says what its wipe erased."""
    vault = unlock(passphrase_file)
    try:
        with UnlockedAppliance.open(vault, model) as app:
            yield app
    except Killed as killed:
        for item in killed.wiped:
            warn(f"wiped: {item}")
        raise


# -- logs ------------------------------------------------------------------------------


@click.group()
def logs() -> None:
    """The encrypted session journal: list, show, verify, search, export."""


def _summary(report: Report) -> str:
    status = "ok" if report.ok else f"BROKEN at {report.brk}"
    return f"{report.session_id}  {len(report.records):4d} records  {status}  {report.preview(48)}"


@logs.command("list")
@passphrase_option
def logs_list(passphrase_file: Optional[Path]) -> None:
    """Every journal session with its record count and state."""
    vault = unlock(passphrase_file)
    try:
        for sid in sessions(vault):
            try:
                say(_summary(check(vault, sid)))
            except (Erased, NotFound) as e:
                say(f"{sid}  unreadable: {e}")
    finally:
        vault.zeroize()


@logs.command("show")
@click.argument("session_id")
@passphrase_option
def logs_show(session_id: str, passphrase_file: Optional[Path]) -> None:
    """Print one verified session, record by record, with provenance."""
    vault = unlock(passphrase_file)
    try:
        records = read(vault, session_id)
    finally:
        vault.zeroize()
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
    vault = unlock(passphrase_file)
    broken = []
    try:
        for sid in [session_id] if session_id else sessions(vault):
            try:
                report = check(vault, sid)
            except (Erased, NotFound) as e:
                if session_id:
                    raise
                say(f"skip    {sid}: {e}")
                continue
            if report.ok:
                note = f" ({report.unsealed} written after the last sealed head: an interrupted append)" if report.unsealed else ""
                say(f"ok      {sid}: {len(report.records)} records{note}")
            else:
                say(f"BROKEN  {sid}: {report.brk}")
                broken.append(report)
    finally:
        vault.zeroize()
    if broken:
        raise JournalBroken(broken[0].session_id, broken[0].brk)


@logs.command("search")
@click.argument("text")
@passphrase_option
def logs_search(text: str, passphrase_file: Optional[Path]) -> None:
    """Every record holding TEXT (any case), session by session, decrypted in memory only: no index is written."""
    vault = unlock(passphrase_file)
    found, searched, in_sessions = 0, 0, set()
    try:
        for hit in search(vault, text):
            if isinstance(hit, Match):
                found += 1
                in_sessions.add(hit.session_id)
                say(f"{hit.session_id}  [{hit.record}] {hit.time} {hit.role} ({hit.provenance}): {hit.snippet}")
            else:
                say(f"skip    {hit.session_id}: {hit.reason}")
        searched = len(sessions(vault))
    finally:
        vault.zeroize()
    say(f"{found} matches in {len(in_sessions)} of {searched} sessions")


@logs.command("export")
@click.argument("session_id")
@click.option("--format", "fmt", type=click.Choice(["md", "jsonl"]), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@passphrase_option
def logs_export(session_id: str, fmt: str, out: Path, passphrase_file: Optional[Path]) -> None:
    """Write one verified session decrypted, as Markdown or JSON lines (mode 0600)."""
    vault = unlock(passphrase_file)
    try:
        records = read(vault, session_id)
    finally:
        vault.zeroize()
    if fmt == "jsonl":
        text = "".join(json.dumps({"record": n, **r}) + "\n" for n, r in enumerate(records, 1))
    else:
        text = markdown_transcript(session_id, records)
    atomic_write(out, text.encode())
    say(f"exported {len(records)} records of {session_id} to {out}")


# -- erase ------------------------------------------------------------------------------


@click.group()
def erase() -> None:
    """Crypto-erase an overlay, the journal, or everything (typed confirmation or --yes)."""


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


def _prove(vault: Vault, items: list[str]) -> None:
    for item in items:
        try:
            zeroize(vault.data_key(item))
        except Erased as e:
            say(f"proof:     decryption of {item} fails: {e}")
            continue
        raise EraseNotProven(f"erase of {item} did not take: its key is still readable")


@erase.command("overlay")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Skip the typed confirmation.")
@passphrase_option
def erase_overlay_cmd(name: str, yes: bool, passphrase_file: Optional[Path]) -> None:
    """Every installed version of overlay NAME."""
    vault = unlock(passphrase_file)
    try:
        _confirm(name, f"overlay {name} (every installed version)", yes)
        t0 = time.perf_counter()
        items = erase_overlay(vault, name)
        say(f"destroyed: data keys of {', '.join(items)} ({time.perf_counter() - t0:.3f} s)")
        _prove(vault, items)
    finally:
        vault.zeroize()


@erase.command("logs")
@click.option("--yes", is_flag=True, help="Skip the typed confirmation.")
@passphrase_option
def erase_logs_cmd(yes: bool, passphrase_file: Optional[Path]) -> None:
    """Every journal session."""
    vault = unlock(passphrase_file)
    try:
        _confirm(ERASE_JOURNAL_PHRASE, "every journal session", yes)
        t0 = time.perf_counter()
        items = erase_journal(vault)
        say(f"destroyed: data keys of {len(items)} journal sessions, then their files ({time.perf_counter() - t0:.3f} s)")
        _prove(vault, items)
    finally:
        vault.zeroize()


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
@click.option("--new-passphrase-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Read the new passphrase from this file (default: a prompt, typed twice).")
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
@click.option("--wipe", is_flag=True, help="Also crypto-erase every overlay.")
@passphrase_option
def kill(wipe: bool, passphrase_file: Optional[Path]) -> None:
    """Stop the running appliance now: generation stops, keys are zeroed, a `kill` record is written.

    The killed command exits with code 4 (locked). With --wipe and nothing running, the overlays
    are erased here (the passphrase is needed for that).
    """
    home = paths.state_dir()
    state.require_initialised(home)
    if running_pid(home) is None and wipe:
        vault = unlock(passphrase_file)
        try:
            items = erase_all_overlays(vault)
        finally:
            vault.zeroize()
        say(f"no running appliance; wiped overlays: {', '.join(items) or 'none installed'}")
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
    vault = unlock(passphrase_file)
    try:
        if policy is not None:
            vault.set_setting(WIPE_POLICY, policy == "wipe")
        say(f"kill policy: {'wipe' if vault.setting(WIPE_POLICY, False) else 'lock'}")
    finally:
        vault.zeroize()
