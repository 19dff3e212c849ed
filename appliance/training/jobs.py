"""Build-station jobs: what `appliance overlay ...` runs, as functions of plain values.

Each job takes the verified base it builds for (the CLI resolves `--base`), its text inputs already
read (`dataset.py`: prompt files, pairs, training data; so bad input is refused before a base is
opened), the directories of our own files, and where it is long a progress callback. It
writes its output directory and returns what it measured; it prints nothing. (`trainer.train` is the
training job itself.)

The base's shape (hidden size, block count, architecture) is read one way, from the GGUF header
(`runtime.embeddings`): nothing is loaded to read two numbers. Where hostile bytes are parsed:
- the base's GGUF never is: that header walk runs in this process only on a base already verified
  (the embedded file against its pin, an installed one decrypted into a sealed memfd and hashed
  against its accepted manifest, after that very file passed the import probe's bounded walk and
  llama.cpp load in a limited child, `runtime.probe`);
- an overlay or control-vector directory is admitted by its loader (`overlay.files`,
  `overlay.control`: size caps, header checks, bound to this base's SHA-256 and shape) before
  anything is computed or written;
- a llama.cpp control-vector GGUF (`import_control`) is the one foreign binary: read by the `gguf`
  package's reader in this process under a 64 MiB cap, every parse failure a refusal, then checked by
  the rules of our own files (`overlay.control_gguf`); llama.cpp never parses it.
"""

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..overlay.control import ControlVector, load_control_dir, save_control
from ..overlay.control_gguf import export_gguf, import_gguf
from ..overlay.files import JSON_NAME, TENSORS_NAME, Overlay, load_overlay_dir, save_overlay
from ..runtime.embeddings import architecture_of, base_shape
from ..runtime.session import Runtime
from ..trust.builtin import VerifiedModel
from .adapter import load_base
from .choices import TrainConfig
from .control_report import sweep
from .dataset import Dataset, Pairs
from .examples import config_of, preservation_examples, split_examples
from .heal import HealResult, heal
from .report import build_report
from .steer import steer
from .trainer import StepLog


def _control(model: VerifiedModel, control_dir: Path) -> ControlVector:
    """The control vector in `control_dir`, admitted for this base (its SHA-256, hidden size, blocks)."""
    hidden, n_layer = base_shape(model.path)
    return load_control_dir(control_dir, base_sha256=model.sha256, hidden_size=hidden, n_layer=n_layer)


def _overlay(model: VerifiedModel, overlay_dir: Path) -> Overlay:
    """The overlay in `overlay_dir`, admitted for this base (its SHA-256 and hidden size)."""
    hidden, _ = base_shape(model.path)
    return load_overlay_dir(overlay_dir, base_sha256=model.sha256, hidden_size=hidden)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def heal_overlay(
    model: VerifiedModel,
    control_dir: Path,
    contrast: Pairs,
    neutral: list[str],
    cfg: TrainConfig,
    out: Path,
    init_dir: Optional[Path] = None,
    on_step: Optional[Callable[[StepLog], None]] = None,
) -> HealResult:
    """`overlay train --heal`: the steered base (with `init_dir`'s overlay on, if given) is the teacher, the
    overlay the student, starting from `init_dir`'s (heal.py); the concept prompts are the pairs' user
    turns without a system prompt; the barrier holds it near the base on `neutral`'s replies."""
    # bound to the same base as the vector, or refused before anything is computed or written
    vector = _control(model, control_dir)
    init = _overlay(model, init_dir) if init_dir is not None else None
    runtime = Runtime(model, n_ctx=2048)
    try:
        engine, render = runtime.engine, runtime.template.render
        prompts = [engine.tokenize(render([m for m in p.positive if m["role"] != "system"])) for p in contrast.pairs]
        ends = {t for t in range(engine.n_vocab) if engine.is_end_of_generation(t)}
    finally:
        runtime.close()
    kept = preservation_examples(model, neutral)
    if init is not None:  # the student has the init's shape: the recorded recipe says so
        p = init.params
        cfg = replace(cfg, rank=p.rank, delays=tuple(p.delays), alpha=p.alpha, activation=p.activation)
    result = heal(
        load_base(model, cfg.device),
        vector,
        prompts,
        kept,
        cfg,
        ends.__contains__,
        init=init.params if init is not None else None,
        init_sha256=_sha256(init_dir / TENSORS_NAME) if init_dir is not None else None,
        on_step=on_step,
    )
    save_overlay(result.overlay, out)
    return result


def steer_vector(
    model: VerifiedModel,
    contrast: Pairs,
    neutral: list[str],
    layers: list[int],
    out: Path,
    *,
    budget: float,
    max_tokens: int,
    device: str,
    overlay_dir: Optional[Path] = None,
) -> ControlVector:
    """`overlay steer`: a control vector from contrastive pairs (steer.py), on `overlay_dir`'s overlay if given."""
    params, digests = None, None
    if overlay_dir is not None:
        params = _overlay(model, overlay_dir).params
        digests = {f"{name}_sha256": _sha256(overlay_dir / name) for name in (JSON_NAME, TENSORS_NAME)}
    vector = steer(model, contrast, neutral, layers, budget=budget, max_tokens=max_tokens, device=device,
                   overlay=params, overlay_sha256=digests)  # fmt: skip
    save_control(vector, out)
    return vector


def export_control(model: VerifiedModel, control_dir: Path, out: Path) -> ControlVector:
    """`overlay control-export`: the vector as llama.cpp's control-vector GGUF, its model hint the base's architecture."""
    vector = _control(model, control_dir)
    export_gguf(vector, out, model_hint=architecture_of(model.path))
    return vector


def import_control(model: VerifiedModel, gguf_path: Path, out: Path) -> ControlVector:
    """`overlay control-import`: a llama.cpp control-vector GGUF admitted for this base, written as our two files."""
    hidden, n_layer = base_shape(model.path)
    vector = import_gguf(gguf_path, base_sha256=model.sha256, hidden_size=hidden, n_layer=n_layer)
    save_control(vector, out)
    return vector


def report_control(
    model: VerifiedModel,
    control_dir: Path,
    prompts: list[str],
    out: Path,
    multiples: tuple[float, ...],
    *,
    max_tokens: int,
    sample_seeds: int,
    heldout: Optional[Pairs] = None,
) -> dict:
    """`overlay control-report`: the vector's sweep of strengths (control_report.py); its metrics."""
    vector = _control(model, control_dir)
    return sweep(model, vector, prompts, out, multiples, max_tokens=max_tokens, sample_seeds=sample_seeds, heldout=heldout)


def report_overlay(
    model: VerifiedModel,
    overlay_dir: Path,
    prompts: list[str],
    out: Path,
    *,
    data: Optional[Dataset],
    max_tokens: int,
    sample_seeds: int,
) -> dict:
    """`overlay report`: overlay on vs off (report.py), with the in-domain NLL on `data`'s held-out split
    (recovered from the overlay's own recorded config); its metrics."""
    overlay = _overlay(model, overlay_dir)
    heldout = split_examples(model, data, config_of(overlay))[0] if data is not None else None
    return build_report(model, overlay, prompts, out, heldout=heldout, max_tokens=max_tokens, sample_seeds=sample_seeds)
