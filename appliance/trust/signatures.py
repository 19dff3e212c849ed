"""Detached GnuPG signatures over a manifest's exact bytes, and the k-of-n count.

A signature file `signatures/<FPR>.asc` counts only if every rule holds; each
rule is one small function that says why it did not:

1. it holds exactly one signature and no signed data of its own (gpg would
   otherwise verify its embedded text and only warn about the detached data);
2. gpg reports it good over the manifest's bytes: not bad, not made by an
   expired or revoked key, not itself expired, its key present;
3. the primary-key fingerprint that signed is the one the file is named by;
4. that fingerprint is pinned in the policy (a key in the keyring is not enough);
5. it is the first signature counted for that fingerprint.

Then the count must reach the policy's threshold, or `ThresholdNotMet` lists
the signatures that counted, and every one that did not with why.

gpg runs in a scratch home holding a copy of the trust store's public keyring
(the bytes the caller checked), so verifying never writes to the state directory
(gpg updates its trustdb, random seed and agent sockets as it likes) and never
reaches for a network key server.
"""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import gnupg

from ..errors import Refused, UsageError
from ..utc import format_time

KEYRING = "pubring.kbx"
# Our trust is the pinned list, not gpg's web of trust; and never fetch a key.
VERIFY_ARGS = ["--trust-model", "always", "--no-auto-key-retrieve"]
GPG_FAILURES = {
    "signature bad": "bad signature (manifest.json changed after signing, or the signature is damaged)",
    "signing key has expired": "signing key has expired",
    "signing key was revoked": "signing key was revoked",
    "signature expired": "signature has expired",
    "no public key": "signing key is not in the trust store",
}


class ThresholdNotMet(Refused):
    pass


class KeyFileRefused(Refused):
    pass


class SigningFailed(Refused):
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


@contextmanager
def scratch_gpg(keyring: Optional[bytes] = None) -> Iterator[tuple[gnupg.GPG, Path]]:
    """A throwaway GnuPG home (holding `keyring` as its public keyring, if given); removed afterwards.

    Under /tmp, whatever $TMPDIR says: gpg-agent's socket path must stay short. Any agent a gpg
    operation started (key generation always does) is stopped with its home, wherever its socket is.
    """
    tmp = Path(tempfile.mkdtemp(prefix="appliance-gpg-", dir="/tmp"))
    try:
        home = tmp / "gnupg"
        home.mkdir(mode=0o700)
        if keyring is not None:
            (home / KEYRING).write_bytes(keyring)
        yield gnupg.GPG(gnupghome=str(home)), tmp
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _statuses(result) -> list[str]:
    return [line.split()[1] for line in result.stderr.splitlines() if line.startswith("[GNUPG:] ") and len(line.split()) > 1]


def _single_detached(result) -> str:
    statuses = _statuses(result)
    if statuses.count("NEWSIG") != 1 or "PLAINTEXT" in statuses:
        return "not exactly one detached signature"
    return ""


def _good(result) -> str:
    if result.valid and result.pubkey_fingerprint:
        return ""
    verdict = result.key_status or result.status  # gpg's VALIDSIG can follow (and mask) EXPKEYSIG/REVKEYSIG
    return GPG_FAILURES.get(verdict, f"not a valid signature ({verdict or 'unreadable'})")


def _named_by_signer(name: str, signer: str) -> str:
    return "" if signer == name else f"made by {signer}, not by the key its file name says"


def _pinned(signer: str, pinned: frozenset[str]) -> str:
    return "" if signer in pinned else "signer is not pinned in the policy"


def _first_for_signer(signer: str, counted: set[str]) -> str:
    return "" if signer not in counted else "same signer counted already"


def gpg_verify(gpg: gnupg.GPG, workdir: Path, sig: bytes, data: bytes):
    """gpg's verdict on one detached signature over `data` (python-gnupg Verify result)."""
    sig_path = workdir / "signature.asc"
    sig_path.write_bytes(sig)
    try:
        return gpg.verify_data(str(sig_path), data, extra_args=VERIFY_ARGS)
    finally:
        sig_path.unlink()


def check_signatures(
    data: bytes, signatures: dict[str, bytes], pinned: frozenset[str], keyring: Optional[bytes]
) -> list[SignatureCheck]:
    """Apply rules 1-5 to every signature file; the result says which count and why the others do not."""
    checks: list[SignatureCheck] = []
    counted: set[str] = set()
    with scratch_gpg(keyring) as (gpg, workdir):
        for name, sig in sorted(signatures.items()):
            result = gpg_verify(gpg, workdir, sig, data)
            signer = result.pubkey_fingerprint if result.valid else None
            reason = _single_detached(result) or _good(result)
            if not reason and signer:  # always both: `_good` passes a valid signature with a fingerprint only
                reason = _named_by_signer(name, signer) or _pinned(signer, pinned) or _first_for_signer(signer, counted)
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
    """Sign `data` with `key` from the signer's own GnuPG home; returns (primary fingerprint, armoured signature)."""
    home = Path(gnupghome or os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")
    result = gnupg.GPG(gnupghome=str(home)).sign(data, keyid=key, detach=True, binary=False)
    if not result.data:
        raise SigningFailed(f"gpg could not sign with key {key}: {result.status or 'no signature made'}")
    signer_keyring = home / KEYRING
    with scratch_gpg(signer_keyring.read_bytes() if signer_keyring.is_file() else None) as (gpg, workdir):
        verdict = gpg_verify(gpg, workdir, result.data, data)
    if not verdict.valid or not verdict.pubkey_fingerprint:
        raise SigningFailed(f"the signature gpg made with key {key} does not verify: {verdict.status}")
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
