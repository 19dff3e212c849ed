"""The key hierarchy on disk: `<state>/vault/master.json` and `<state>/vault/slots.json`.

    passphrase --Argon2id (else scrypt), parameters in master.json--> KEK
    KEK    --AES-256-GCM--> master key (32 random bytes)        master.json "master"
    master --AES-256-GCM--> key-slot table                       slots.json "sealed"
    key-slot table = {items: {item_id: {key, files}}, erased: {item_id: time},
                      heads: {item_id: {seq, hash}}, settings: {...},
                      files: {path under the state dir: [sha256, ...]}}   (`sealed_state`)

Rules:
- Changing the passphrase rewrites master.json only; the table and the data are untouched.
- The table is sealed as a whole, so the journal heads kept in it and the list of erased items
  are as tamper-evident as the data keys themselves.
- Every table change is read-modify-write under an exclusive `flock` on `vault/lock`, so two
  appliance processes never lose each other's keys or heads.
- Every write of a vault file holds that lock, so a temp file found beside them by whoever takes
  the lock is left by an interrupted write, and may be a whole copy of the old table or master
  slot: it is removed then, before anything else. Every erase takes the lock, so no copy of an
  erased key survives in one.
- Key buffers are mlocked where the OS allows (`hardening.lock_secret`) and zeroed after use.
- `erase_all` needs no passphrase: it replaces master.json by a tombstone, after which no
  passphrase opens anything; `Vault.create` may then start afresh.
- Unlock fails (exit 4) without changing a byte on disk: missing vault, wrong passphrase,
  malformed or tampered file.
"""

import base64
import binascii
import fcntl
import json
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import EnvironmentRefused, Erased, Locked, NotFound, Refused
from ..fsutil import atomic_write, fsync_dir, remove_stale_temps
from ..hardening import lock_secret
from ..utc import now_text

try:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
except ImportError:  # builds linked against OpenSSL < 3.2 have no Argon2
    Argon2id = None  # type: ignore[misc,assignment]  # `_derive_kek` refuses an Argon2id vault then

VAULT_DIR = "vault"
MASTER_FILE = "master.json"
SLOTS_FILE = "slots.json"
LOCK_FILE = "lock"
TRASH_DIR = ".erased"  # ciphertext whose keys are gone, waiting to be unlinked
MASTER_FORMAT = "appliance-vault/1"
SLOTS_FORMAT = "appliance-keyslots/1"
KEY_BYTES = 32
NONCE_BYTES = 12
MAX_VAULT_FILE = 16 << 20  # far above any real table; a larger file is refused unread
ITEM_ID = re.compile(r"[a-z]+(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){1,3}")

# Tuned on the 2-core reference machine: about 0.1 s per unlock, 64 MiB of memory.
ARGON2ID_PARAMS = {"name": "argon2id", "iterations": 3, "lanes": 2, "memory_kib": 65536}
SCRYPT_PARAMS = {"name": "scrypt", "n": 1 << 15, "r": 8, "p": 1}
# What a stored parameter set may ask for: a tampered file must not make unlock eat the machine.
KDF_BOUNDS = {"iterations": (1, 16), "lanes": (1, 16), "memory_kib": (8, 1 << 20), "n": (2, 1 << 20), "r": (1, 32), "p": (1, 16)}

MASTER_AD = b"appliance-vault/1 master key"
SLOTS_AD = b"appliance-keyslots/1 table"


class NoVault(Locked):
    def __init__(self, home: Path):
        super().__init__(f"no vault in {home}: run `appliance init` to set a passphrase")


class WrongPassphrase(Locked):
    def __init__(self):
        super().__init__("wrong passphrase (or a damaged vault file): the vault stays locked, nothing was changed")


class VaultCorrupt(Locked):
    """master.json is malformed: nothing can be unlocked from it."""


class KeySlotsCorrupt(VaultCorrupt):
    """slots.json is malformed or failed authentication under the master key."""


class VaultErased(Erased):
    def __init__(self, when: str):
        super().__init__(f"the vault was crypto-erased at {when}: no passphrase opens it; `appliance init` starts afresh")


def discard(home: Path, paths: list[Path]) -> list[Path]:
    """Remove files or folders of keyless ciphertext in a time that does not grow with their size.

    Each is renamed out of sight into one fresh batch under `<home>/.erased/` (O(1), fsynced once per
    folder), then the batch is unlinked by a detached process: freeing a large file's blocks takes
    time in proportion to its size. Returns the paths that existed.
    """
    batch = home / TRASH_DIR / os.urandom(8).hex()  # this call's own: nothing else races on it
    batch.mkdir(mode=0o700, parents=True)
    moved: list[Path] = []
    emptied: set[Path] = set()
    for path in paths:
        if path.exists():
            os.rename(path, batch / str(len(moved)))
            emptied.add(path.parent)
            moved.append(path)
    for folder in emptied | {batch}:  # once each, not once per file
        fsync_dir(folder)
    _unlink_detached(batch)
    return moved


def _unlink_detached(directory: Path) -> None:
    """Remove `directory` (erased ciphertext only) in a detached process that outlives this command."""
    subprocess.Popen(
        ["rm", "-rf", "--", str(directory)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def zeroize(buf: bytearray) -> None:
    """Overwrite a key buffer in place (same length, so no reallocation leaves the old bytes behind)."""
    buf[:] = bytes(len(buf))


def random_key() -> bytearray:
    """A fresh data key, held only in memory until `Vault.record_data_key` (or never: a throwaway key)."""
    return _secret(os.urandom(KEY_BYTES))


def _secret(data: bytes) -> bytearray:
    """Key material in a buffer that can be zeroed, its pages locked out of swap where allowed."""
    buf = bytearray(data)
    lock_secret(buf)
    return buf


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value, error: type, what: str) -> bytes:
    if not isinstance(value, str):
        raise error(f"{what}: not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what}: not valid base64") from None


def _load_json(path: Path, error: type) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_VAULT_FILE + 1)
    except FileNotFoundError:
        raise error(f"{path}: missing") from None
    except OSError as e:
        raise error(f"{path}: unreadable: {e.strerror}") from None
    if len(raw) > MAX_VAULT_FILE:
        raise error(f"{path}: larger than {MAX_VAULT_FILE} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error(f"{path}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise error(f"{path}: not a JSON object")
    return doc


def _seal(key: bytes | bytearray, plaintext: bytes | bytearray, ad: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)  # random: a key may seal many times and counters would need state
    return _b64(nonce + AESGCM(key).encrypt(nonce, plaintext, ad))


def _open(key: bytes | bytearray, sealed: bytes, ad: bytes) -> bytes:
    """AES-GCM open; raises InvalidTag on a wrong key or any modified byte."""
    if len(sealed) < NONCE_BYTES + 16:
        raise InvalidTag()
    return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)


def _kdf_params() -> dict:
    params = dict(ARGON2ID_PARAMS if Argon2id is not None else SCRYPT_PARAMS)
    params["salt"] = _b64(os.urandom(16))
    return params


def _derive_kek(passphrase: bytes | bytearray, kdf) -> bytearray:
    """Run the stored KDF; parameters outside KDF_BOUNDS or of the wrong type are a corrupt vault."""
    if not isinstance(kdf, dict):
        raise VaultCorrupt("master.json: kdf is not an object")
    salt = _unb64(kdf.get("salt"), VaultCorrupt, "master.json: kdf salt")
    names = {"argon2id": ("iterations", "lanes", "memory_kib"), "scrypt": ("n", "r", "p")}
    name = kdf.get("name")
    if name not in names:
        raise VaultCorrupt(f"master.json: unknown kdf {name!r}")
    values = {}
    for field in names[name]:
        v, (lo, hi) = kdf.get(field), KDF_BOUNDS[field]
        if type(v) is not int or not lo <= v <= hi:
            raise VaultCorrupt(f"master.json: kdf {field} missing or outside [{lo}, {hi}]")
        values[field] = v
    if not 8 <= len(salt) <= 64:
        raise VaultCorrupt("master.json: kdf salt length out of bounds")
    kdf_obj: Argon2id | Scrypt
    try:
        if name == "argon2id":
            if Argon2id is None:
                raise VaultCorrupt("this build of `cryptography` has no Argon2id, which the vault needs")
            kdf_obj = Argon2id(
                salt=salt, length=KEY_BYTES, iterations=values["iterations"], lanes=values["lanes"],
                memory_cost=max(values["memory_kib"], 8 * values["lanes"]),
            )
        else:
            if values["n"] & (values["n"] - 1):
                raise VaultCorrupt("master.json: scrypt n is not a power of two")
            kdf_obj = Scrypt(salt=salt, length=KEY_BYTES, n=values["n"], r=values["r"], p=values["p"])
        # the passphrase as given, no immutable copy of it: `derive` takes any buffer (its stubs say bytes)
        return _secret(kdf_obj.derive(passphrase))  # type: ignore[arg-type]
    except (ValueError, MemoryError) as e:
        raise VaultCorrupt(f"master.json: kdf parameters rejected: {e}") from None


def _durable(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data)
    except OSError as e:
        raise EnvironmentRefused(f"cannot write {path} ({e.strerror}): it is unchanged") from None


def _vault_dir(home: Path) -> Path:
    return home / VAULT_DIR


@contextmanager
def _vault_lock(home: Path) -> Iterator[None]:
    """The lock every writer of a vault file holds; taking it clears what interrupted writes left."""
    vdir = _vault_dir(home)
    fd = os.open(vdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        remove_stale_temps(vdir)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _read_master(home: Path) -> dict:
    """master.json as a checked dict; NoVault if absent, VaultErased if it is the erase tombstone."""
    path = _vault_dir(home) / MASTER_FILE
    if not path.exists():
        raise NoVault(home)
    doc = _load_json(path, VaultCorrupt)
    if doc.get("format") != MASTER_FORMAT:
        raise VaultCorrupt(f"{path}: not an {MASTER_FORMAT} file")
    if "erased" in doc:
        raise VaultErased(str(doc["erased"])[:40])
    return doc


def _check_table(table) -> dict:
    """The decrypted table is authentic (we sealed it) but is still checked: a bug must not pass silently."""
    if not isinstance(table, dict) or not all(isinstance(table.get(k), dict) for k in ("items", "erased", "heads", "settings")):
        raise KeySlotsCorrupt("slots.json: the sealed table has the wrong shape")
    if not isinstance(table.get("files", {}), dict):
        raise KeySlotsCorrupt("slots.json: the sealed file digests have the wrong shape")
    for entry in table["items"].values():
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), list):
            raise KeySlotsCorrupt("slots.json: a key slot has the wrong shape")
    return table


class Vault:
    """An unlocked vault: holds the master key (zeroed by `zeroize`) and reads the table per call."""

    def __init__(self, home: Path, master: bytearray):
        self.home = home
        self._master = master

    # -- whole-vault operations ----------------------------------------------------

    @staticmethod
    def state(home: Path) -> str:
        """'none', 'erased' or 'present' (present says nothing about the passphrase)."""
        try:
            _read_master(home)
        except NoVault:
            return "none"
        except VaultErased:
            return "erased"
        except VaultCorrupt:
            return "present"
        return "present"

    @staticmethod
    def require(home: Path) -> None:
        """Raise NoVault / VaultErased / VaultCorrupt unless a vault is there to unlock (no key work)."""
        _read_master(home)

    @classmethod
    def create(cls, home: Path, passphrase: bytes | bytearray) -> "Vault":
        """A new vault with an empty table. Refused where a live vault exists (an erased one is replaced)."""
        if not passphrase:
            raise Refused("the passphrase must not be empty")
        if cls.state(home) == "present":
            raise Refused(f"a vault already exists in {home}: use `appliance passphrase` to change its passphrase")
        vdir = _vault_dir(home)
        vdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        vault = cls(home, random_key())
        try:
            with _vault_lock(home):
                # The table first: a crash before master.json lands leaves "no vault" (or the old
                # tombstone), and the next create overwrites this orphan table.
                vault._write_table({"items": {}, "erased": {}, "heads": {}, "settings": {}})
                kdf = _kdf_params()
                kek = _derive_kek(passphrase, kdf)
                try:
                    master_doc = {"format": MASTER_FORMAT, "created": now_text(), "kdf": kdf, "master": _seal(kek, vault._master, MASTER_AD)}
                finally:
                    zeroize(kek)
                _durable(vdir / MASTER_FILE, (json.dumps(master_doc, indent=2) + "\n").encode())
        except BaseException:
            vault.zeroize()
            raise
        return vault

    @classmethod
    def unlock(cls, home: Path, passphrase: bytes | bytearray) -> "Vault":
        """Derive the KEK, unwrap the master key and check the table opens; read-only on disk."""
        doc = _read_master(home)
        sealed = _unb64(doc.get("master"), VaultCorrupt, "master.json: master")
        kek = _derive_kek(passphrase, doc.get("kdf"))
        try:
            master = _secret(_open(kek, sealed, MASTER_AD))
        except InvalidTag:
            raise WrongPassphrase() from None
        finally:
            zeroize(kek)
        if len(master) != KEY_BYTES:
            raise VaultCorrupt("master.json: the master key has the wrong length")
        vault = cls(home, master)
        try:
            vault._read_table()
        except BaseException:
            vault.zeroize()
            raise
        return vault

    @classmethod
    def change_passphrase(cls, home: Path, old: bytes | bytearray, new: bytes | bytearray) -> None:
        """Rewrap the master key under a KEK from `new` (fresh salt); data keys and data are untouched."""
        if not new:
            raise Refused("the new passphrase must not be empty")
        vault = cls.unlock(home, old)
        try:
            with vault._locked():
                doc = _read_master(home)
                doc["kdf"] = _kdf_params()
                kek = _derive_kek(new, doc["kdf"])
                try:
                    doc["master"] = _seal(kek, vault._master, MASTER_AD)
                finally:
                    zeroize(kek)
                _durable(_vault_dir(home) / MASTER_FILE, (json.dumps(doc, indent=2) + "\n").encode())
        finally:
            vault.zeroize()

    @staticmethod
    def erase_all(home: Path) -> str:
        """Destroy the master key slot (needs no passphrase), then the sealed table. Returns the time."""
        vdir = _vault_dir(home)
        if Vault.state(home) == "none":
            raise NotFound(f"no vault in {home}")
        with _vault_lock(home):  # waits out a write in flight, and clears the copies interrupted ones left
            when = now_text()
            _durable(vdir / MASTER_FILE, (json.dumps({"format": MASTER_FORMAT, "erased": when}) + "\n").encode())
            (vdir / SLOTS_FILE).unlink(missing_ok=True)
            fsync_dir(vdir)
        return when

    def zeroize(self) -> None:
        zeroize(self._master)

    # -- items -------------------------------------------------------------------------

    def new_data_key(self, item_id: str, files: Sequence[str] = ()) -> bytearray:
        """A fresh random data key for `item_id`, recorded in the table before it is returned."""
        key = random_key()
        try:
            self.record_data_key(item_id, key, files)
        except BaseException:
            zeroize(key)
            raise
        return key

    def record_data_key(self, item_id: str, key: bytearray, files: Sequence[str] = (), *, replace: bool = False) -> None:
        """Record `key` (from `random_key`) as the data key of `item_id`, in one atomic table rewrite.

        For callers that must encrypt before they may write to the vault (an import that can still
        be refused keeps its key in memory until it commits). `files` are the item's ciphertext
        paths relative to the state dir: crypto-erase deletes them after the key is gone.
        Re-creating an erased id is allowed (a fresh key). An existing key is refused unless
        `replace`, which only a caller that knows that key to be an orphan may ask for.
        """
        if not ITEM_ID.fullmatch(item_id):
            raise Refused(f"not a valid item id: {item_id!r}")
        if len(key) != KEY_BYTES:
            raise Refused(f"a data key is {KEY_BYTES} bytes, not {len(key)}")
        for f in files:
            self._inside_home(f)
        with self._table() as table:
            if item_id in table["items"] and not replace:
                raise Refused(f"{item_id} already has a data key")
            table["erased"].pop(item_id, None)
            table["items"][item_id] = {"key": _b64(key), "files": list(files), "created": now_text()}

    def data_key(self, item_id: str) -> bytearray:
        table = self._read_table()
        entry = table["items"].get(item_id)
        if entry is None:
            if item_id in table["erased"]:
                raise Erased(f"{item_id} was crypto-erased at {table['erased'][item_id]}: its data key is gone")
            raise NotFound(f"no such item in the vault: {item_id}")
        key = _secret(_unb64(entry.get("key"), KeySlotsCorrupt, f"slots.json: key of {item_id}"))
        if len(key) != KEY_BYTES:
            raise KeySlotsCorrupt(f"slots.json: key of {item_id} has the wrong length")
        return key

    def items(self, prefix: str = "") -> list[str]:
        return sorted(i for i in self._read_table()["items"] if i.startswith(prefix))

    def erased_items(self, prefix: str = "") -> dict[str, str]:
        """Tombstones: erased item id -> UTC time of the erase."""
        return {i: t for i, t in sorted(self._read_table()["erased"].items()) if i.startswith(prefix)}

    def erase(self, item_ids: list[str]) -> list[str]:
        """Crypto-erase items in one atomic table rewrite, then delete their ciphertext files.

        Unknown ids raise NotFound, already erased ones Erased; in both cases nothing changes.
        Returns the ciphertext paths deleted (relative to the state dir).
        """
        with self._table() as table:
            for item_id in item_ids:
                if item_id not in table["items"]:
                    if item_id in table["erased"]:
                        raise Erased(f"{item_id} was already crypto-erased at {table['erased'][item_id]}")
                    raise NotFound(f"no such item in the vault: {item_id}")
            files, when = [], now_text()
            for item_id in item_ids:
                files += table["items"].pop(item_id)["files"]
                table["heads"].pop(item_id, None)
                table["erased"][item_id] = when
        # The keys are gone (durably) before any ciphertext is touched: a crash in between
        # leaves undecryptable files, never a readable item that was meant to be erased.
        paths = {self._inside_home(rel): rel for rel in files}
        return [paths[path] for path in discard(self.home, list(paths))]

    # -- sealed heads (the journal's last record per session) ---------------------------

    def head(self, item_id: str) -> tuple[int, str] | None:
        head = self._read_table()["heads"].get(item_id)
        if head is None:
            return None
        if not isinstance(head, dict) or type(head.get("seq")) is not int or not isinstance(head.get("hash"), str):
            raise KeySlotsCorrupt(f"slots.json: head of {item_id} has the wrong shape")
        return head["seq"], head["hash"]

    def seal_head(self, item_id: str, seq: int, digest: str) -> None:
        with self._table() as table:
            if item_id not in table["items"]:
                if item_id in table["erased"]:
                    raise Erased(f"{item_id} was crypto-erased at {table['erased'][item_id]}")
                raise NotFound(f"no such item in the vault: {item_id}")
            table["heads"][item_id] = {"seq": seq, "hash": digest}

    # -- settings sealed with the keys (so changing them needs the passphrase) -----------

    def setting(self, name: str, default=None):
        return self._read_table()["settings"].get(name, default)

    def set_setting(self, name: str, value) -> None:
        with self._table() as table:
            table["settings"][name] = value

    # -- digests of sealed state files (`sealed_state`): what only the passphrase can change --

    def file_digests(self, rel: str) -> tuple[str, ...]:
        digests = self._read_table().get("files", {}).get(rel, [])
        if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
            raise KeySlotsCorrupt(f"slots.json: the digests of {rel} have the wrong shape")
        return tuple(digests)

    def set_file_digests(self, rel: str, digests: tuple[str, ...]) -> None:
        with self._table() as table:
            table.setdefault("files", {})[rel] = sorted(set(digests))

    def forget_file_digests(self, rels: list[str]) -> None:
        """Drop the digests of these files, and of every file under them (a folder the appliance deleted)."""
        with self._table() as table:
            files = table.setdefault("files", {})
            for known in list(files):
                if any(known == rel or known.startswith(rel.rstrip("/") + "/") for rel in rels):
                    del files[known]

    # -- the table on disk ---------------------------------------------------------------

    def _inside_home(self, rel: str) -> Path:
        if not isinstance(rel, str) or os.path.isabs(rel):
            raise Refused(f"ciphertext path is not relative to the state dir: {rel!r}")
        path = (self.home / rel).resolve()
        if self.home.resolve() not in path.parents:
            raise Refused(f"ciphertext path outside the state dir: {rel!r}")
        return path

    def _read_table(self) -> dict:
        path = _vault_dir(self.home) / SLOTS_FILE
        doc = _load_json(path, KeySlotsCorrupt)
        if doc.get("format") != SLOTS_FORMAT:
            raise KeySlotsCorrupt(f"{path}: not an {SLOTS_FORMAT} file")
        sealed = _unb64(doc.get("sealed"), KeySlotsCorrupt, f"{path}: sealed")
        try:
            plain = _open(self._master, sealed, SLOTS_AD)
        except InvalidTag:
            raise KeySlotsCorrupt(f"{path}: failed authentication under the master key (damaged or replaced)") from None
        try:
            return _check_table(json.loads(plain))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise KeySlotsCorrupt(f"{path}: the sealed table is not valid JSON") from None

    def _write_table(self, table: dict) -> None:
        doc = {"format": SLOTS_FORMAT, "sealed": _seal(self._master, json.dumps(table).encode(), SLOTS_AD)}
        _durable(_vault_dir(self.home) / SLOTS_FILE, (json.dumps(doc) + "\n").encode())

    def _locked(self) -> AbstractContextManager[None]:
        return _vault_lock(self.home)

    @contextmanager
    def _table(self) -> Iterator[dict]:
        """Read-modify-write of the table under the lock; written back only if the body succeeds."""
        with self._locked():
            table = self._read_table()
            yield table
            self._write_table(table)
