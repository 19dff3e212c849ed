"""Detached GnuPG signatures over a manifest's exact bytes, and the k-of-n count.

Signatures are judged at one moment, `judgement_time`: max(now, the time floor), refused
outright (`ClockBehindFloor`) while the clock is more than `CLOCK_TOLERANCE` behind the floor.
A signature file `signatures/<FPR>.asc` counts only if every rule holds; each
rule is one small function that says why it did not:

1. it holds exactly one signature and no signed data of its own (gpg would
   otherwise verify its embedded text and only warn about the detached data);
2. its digest is SHA-256 or stronger (gpg itself refuses SHA-1, `--weak-digest`);
3. gpg reports it good over the manifest's bytes, judged at that moment
   (`--faked-system-time`): not bad, not made by a key or subkey expired or
   revoked by then, not itself expired by then, its key present;
4. it is a binary signature (class 0x00): a text-mode one (0x01) also holds
   over the manifest with its line ends changed, so over other bytes;
5. it was made no later than that moment plus `CLOCK_TOLERANCE`;
6. the primary-key fingerprint that signed is the one the file is named by;
7. the policy counts that signer for this manifest's kind and name (it is
   pinned; a demo signer only for its demo items: `trust.policy`);
8. it is the first signature counted for that fingerprint.

Then the count must reach the policy's threshold, or `ThresholdNotMet` lists
the signatures that counted, and every one that did not with why.

Rules 2, 4 and 5 read gpg's VALIDSIG (or ERRSIG) status line. gpg's status
lines are all python-gnupg reads from its stderr; gpg's own log goes to a file
beside the scratch home (`--logger-file`), so no logged text can pass for a
status line. gpg is run from an absolute path found once in the system's own
directories (`gpg_binary`), never through $PATH.

gpg runs in a scratch home holding a copy of the trust store's public keyring
(the bytes the caller checked), so verifying never writes to the state directory
(gpg updates its trustdb, random seed and agent sockets as it likes) and never
reaches for a network key server.
"""

import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import gnupg

from .. import children
from ..errors import Refused, UsageError
from ..utc import CLOCK_TOLERANCE, format_time, now

KEYRING = "pubring.kbx"
GPG_DIRS = ("/usr/bin", "/bin", "/usr/local/bin")  # where gpg is looked for, in order: never $PATH
# Our trust is the pinned list, not gpg's web of trust; never fetch a key; SHA-1 is too weak to count.
VERIFY_ARGS = ["--trust-model", "always", "--no-auto-key-retrieve", "--weak-digest", "SHA1"]
GPG_FAILURES = {  # gpg's status keyword (doc/DETAILS) -> why the signature does not count
    "BADSIG": "bad signature (manifest.json changed after signing, or the signature is damaged)",
    "EXPKEYSIG": "signing key has expired",
    "REVKEYSIG": "signing key was revoked",
    "EXPSIG": "signature has expired",
    "NO_PUBKEY": "signing key is not in the trust store",
}
BINARY_SIGNATURE = "00"  # OpenPGP signature class 0x00: over the bytes as they are
STRONG_DIGESTS = {8: "SHA-256", 9: "SHA-384", 10: "SHA-512"}  # OpenPGP hash algorithm ids
WEAK_DIGESTS = {1: "MD5", 2: "SHA-1", 3: "RIPEMD-160", 11: "SHA-224"}


class ThresholdNotMet(Refused):
    pass


class KeyFileRefused(Refused):
    pass


class SigningFailed(Refused):
    pass


class ClockBehindFloor(Refused):
    """The clock reads earlier than the time floor by more than the tolerance: set back, or wrong."""


class GpgNotFound(Refused):
    pass


@dataclass(frozen=True)
class SignatureCheck:
    name: str  # the fingerprint the file is named by
    signer: Optional[str]  # the primary-key fingerprint gpg reported, when it got that far
    reason: str  # why it does not count; "" when it counts

    @property
    def counted(self) -> bool:
        return not self.reason


def normalise_fingerprint(text: str) -> str:
    fpr = "".join(text.split()).upper()
    if len(fpr) != 40 or any(c not in "0123456789ABCDEF" for c in fpr):
        raise UsageError(f"{text!r} is not a 40-hex-digit key fingerprint")
    return fpr


@functools.cache
def gpg_binary() -> Path:
    """The absolute path of gpg, found once in `GPG_DIRS`: a $PATH with `.` or a user's bin first picks no other gpg."""
    for directory in GPG_DIRS:
        path = Path(directory, "gpg")
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise GpgNotFound(f"gpg is not installed in {', '.join(GPG_DIRS)} (it is never looked up through $PATH)")


def gpg_in(home: Path, log: Path) -> gnupg.GPG:
    """python-gnupg on the pinned gpg binary for GnuPG home `home`, gpg's log written to `log`, apart from its status lines."""
    binary = gpg_binary()
    return gnupg.GPG(
        gpgbinary=str(binary),
        gnupghome=str(home),
        options=["--logger-file", str(log)],
        env=children.environment(extra={"PATH": str(binary.parent)}),  # python-gnupg takes no cwd: gpg reads none
    )


def judgement_time(clock: datetime, floor: Optional[datetime]) -> datetime:
    """max(clock, floor): the moment keys and signatures are judged at; `ClockBehindFloor` while the clock is
    further behind the floor than `CLOCK_TOLERANCE` (everything accepted was made before the floor, so a
    clock that far behind it was set back or is wrong, and would judge expiry by a time already passed)."""
    if floor is None or clock >= floor:
        return clock
    if clock + CLOCK_TOLERANCE < floor:
        raise ClockBehindFloor(
            f"the clock ({format_time(clock)}) is earlier than the time floor ({format_time(floor)}), the newest"
            " time of a bundle already accepted: set the clock right before importing"
        )
    return floor


@contextmanager
def scratch_gpg(keyring: Optional[bytes] = None, under: Path = Path("/tmp")) -> Iterator[tuple[gnupg.GPG, Path]]:
    """A throwaway GnuPG home in a new directory in `under` (holding `keyring` as its public keyring, if
    given), gpg's log beside it; removed afterwards.

    Under /tmp by default, whatever $TMPDIR says: gpg-agent's socket path must stay short. Any agent a gpg
    operation started (key generation always does) is stopped with its home, wherever its socket is.
    """
    tmp = Path(tempfile.mkdtemp(prefix="appliance-gpg-", dir=under))
    try:
        home = tmp / "gnupg"
        home.mkdir(mode=0o700)
        if keyring is not None:
            (home / KEYRING).write_bytes(keyring)
        yield gpg_in(home, tmp / "gpg.log"), tmp
    finally:
        children.run([str(gpg_binary().with_name("gpgconf")), "--homedir", str(home), "--kill", "all"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _status(result, keyword: str) -> list[list[str]]:
    """The arguments of each `keyword` status line gpg wrote."""
    lines = (line.split() for line in result.stderr.splitlines() if line.startswith("[GNUPG:] "))
    return [words[2:] for words in lines if len(words) > 1 and words[1] == keyword]


def _single_detached(result) -> str:
    if len(_status(result, "NEWSIG")) != 1 or _status(result, "PLAINTEXT"):
        return "not exactly one detached signature"
    return ""


def _strong_digest(result) -> str:
    # VALIDSIG's 8th argument and ERRSIG's 3rd are the hash algorithm (gpg's doc/DETAILS).
    algos = [int(a[7]) for a in _status(result, "VALIDSIG") if len(a) > 7 and a[7].isdigit()]
    algos += [int(a[2]) for a in _status(result, "ERRSIG") if len(a) > 2 and a[2].isdigit()]
    weak = [a for a in algos if a not in STRONG_DIGESTS]
    if weak:
        return (
            f"made with a weak digest ({WEAK_DIGESTS.get(weak[0], f'hash algorithm {weak[0]}')}): SHA-256 or stronger is required"
        )
    return ""


def _good(result) -> str:
    # Read from the status lines themselves: gpg's VALIDSIG follows (and, in python-gnupg's summary, masks)
    # EXPSIG, EXPKEYSIG and REVKEYSIG.
    for keyword, why in GPG_FAILURES.items():
        if _status(result, keyword):
            return why
    if _status(result, "GOODSIG") and result.pubkey_fingerprint and len(_status(result, "VALIDSIG")) == 1:
        return ""
    return f"not a valid signature ({result.status or 'unreadable'})"


def _validsig(result) -> list[str]:
    (args,) = _status(result, "VALIDSIG")  # `_good` passed: exactly one, with the primary key's fingerprint (10 args)
    return args


def _binary(result) -> str:
    sig_class = _validsig(result)[8]
    if sig_class != BINARY_SIGNATURE:
        return f"not a binary signature (class 0x{sig_class}; a text-mode signature also holds over other bytes)"
    return ""


def _signed_at(result) -> datetime:
    stamp = _validsig(result)[2]  # seconds since the epoch, or ISO 8601 (`T` inside) as gpg may write it
    if "T" in stamp:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(int(stamp), timezone.utc)


def _not_from_the_future(result, at: datetime) -> str:
    made = _signed_at(result)
    if made > at + CLOCK_TOLERANCE:
        return f"dated in the future ({format_time(made)}, after {format_time(at)} plus {CLOCK_TOLERANCE})"
    return ""


def _named_by_signer(name: str, signer: str) -> str:
    return "" if signer == name else f"made by {signer}, not by the key its file name says"


def _first_for_signer(signer: str, counted: set[str]) -> str:
    return "" if signer not in counted else "same signer counted already"


def signature_faults(result, at: datetime) -> str:
    """Rules 1-5 on gpg's verdict: why the signature is not a good one at `at`, or ""."""
    return (
        _single_detached(result) or _strong_digest(result) or _good(result) or _binary(result) or _not_from_the_future(result, at)
    )


def gpg_verify(gpg: gnupg.GPG, workdir: Path, sig: bytes, data: bytes, at: datetime):
    """gpg's verdict on one detached signature over `data`, keys and expiry judged at `at` (python-gnupg Verify result)."""
    sig_path = workdir / "signature.asc"
    sig_path.write_bytes(sig)
    try:
        return gpg.verify_data(str(sig_path), data, extra_args=[*VERIFY_ARGS, "--faked-system-time", f"{int(at.timestamp())}!"])
    finally:
        sig_path.unlink()


def check_signatures(
    data: bytes, signatures: dict[str, bytes], keyring: Optional[bytes], at: datetime, policy_refuses: Callable[[str], str]
) -> list[SignatureCheck]:
    """Apply rules 1-8 to every signature file, judged at `at`; `policy_refuses(signer)` is rule 7 ("" counts).
    The result says which count and why the others do not."""
    checks: list[SignatureCheck] = []
    counted: set[str] = set()
    with scratch_gpg(keyring) as (gpg, workdir):
        for name, sig in sorted(signatures.items()):
            result = gpg_verify(gpg, workdir, sig, data, at)
            reason = signature_faults(result, at)
            signer = None if reason else result.pubkey_fingerprint
            if signer:  # always, once rules 1-5 passed: `_good` passes a valid signature with a fingerprint only
                reason = _named_by_signer(name, signer) or policy_refuses(signer) or _first_for_signer(signer, counted)
                if not reason:
                    counted.add(signer)
            checks.append(SignatureCheck(name, signer, reason))
    return checks


def require_threshold(checks: list[SignatureCheck], threshold: int) -> tuple[str, ...]:
    """The counted signers' fingerprints, or `ThresholdNotMet` naming those that counted and why each other did not."""
    signers = tuple(c.signer for c in checks if c.counted and c.signer is not None)
    if len(signers) < threshold:
        counted = ", ".join(signers) or "none"
        not_counted = ", ".join(f"{c.name} ({c.reason})" for c in checks if not c.counted) or "none"
        raise ThresholdNotMet(
            f"manifest.json has {len(signers)} of {threshold} required signatures from pinned signers"
            f" (counted: {counted}; did not count: {not_counted})"
        )
    return signers


def scan_key_file(data: bytes, fingerprint: str) -> None:
    """Rule for `trust add`: the file holds exactly one public key, and its fingerprint is the one typed."""
    with scratch_gpg() as (gpg, _):
        keys = gpg.scan_keys_mem(data)
    if len(keys) != 1:
        raise KeyFileRefused(f"the key file must hold exactly one key, it holds {len(keys)}")
    (key,) = keys
    if key["type"] != "pub":
        raise KeyFileRefused("the key file holds a secret key: give the signer's public key only")
    if key["fingerprint"] != fingerprint:
        raise KeyFileRefused(f"the key file's fingerprint {key['fingerprint']} is not the one typed, {fingerprint}")


def sign_detached(gnupghome: Optional[Path], key: str, data: bytes) -> tuple[str, bytes]:
    """Sign `data` with `key` from the signer's own GnuPG home; returns (primary fingerprint, armoured signature).

    The signature is checked by rules 1-5 before it is returned: a signer whose gpg.conf asks for
    text mode or SHA-1 learns it here, not from a refused import."""
    home = Path(gnupghome or os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")
    signer_keyring = home / KEYRING
    with scratch_gpg(signer_keyring.read_bytes() if signer_keyring.is_file() else None) as (gpg, workdir):
        result = gpg_in(home, workdir / "sign.log").sign(data, keyid=key, detach=True, binary=False)
        if not result.data:
            raise SigningFailed(f"gpg could not sign with key {key}: {result.status or 'no signature made'}")
        at = now()
        verdict = gpg_verify(gpg, workdir, result.data, data, at)
    fault = signature_faults(verdict, at)
    if fault:
        raise SigningFailed(f"the signature gpg made with key {key} would not count: {fault}")
    # gpg signs with the home's default key when it cannot find the one asked for: a mistyped
    # fingerprint must not quietly become another signer's signature.
    wanted = "".join(key.split()).upper()
    if not any(fpr and fpr.upper().endswith(wanted) for fpr in (verdict.pubkey_fingerprint, verdict.fingerprint)):
        raise SigningFailed(
            f"gpg signed with key {verdict.pubkey_fingerprint}, not with the key asked for ({key}): nothing was signed"
        )
    return verdict.pubkey_fingerprint, result.data


def key_summaries(keyring: Optional[bytes]) -> dict[str, str]:
    """fingerprint -> "user id, expiry" for the keys in a keyring, read from a scratch copy."""
    if keyring is None:
        return {}
    with scratch_gpg(keyring) as (gpg, _):
        keys = gpg.list_keys()
    return {k["fingerprint"]: f"{', '.join(k['uids'])}; {_expiry(k)}" for k in keys}


def _expiry(key: dict) -> str:
    if key.get("trust") == "r":
        return "revoked"
    if key.get("trust") == "e":
        return "expired"
    if not key.get("expires"):
        return "no expiry"
    return f"expires {format_time(datetime.fromtimestamp(int(key['expires']), timezone.utc))}"
