"""`appliance overlay control-export | control-import | steer`: build-station work on control vectors."""

from pathlib import Path
from typing import Optional

import click

from .output import say
from .unlocking import passphrase_option, unlocked


def _base():
    """The embedded base, verified, and its shape: (model, hidden size, block count, architecture)."""
    from ..runtime.llama import LlamaEngine
    from ..trust.builtin import embedded_pin, verify_pinned

    model = verify_pinned(embedded_pin())
    engine = LlamaEngine(model.path, n_ctx=64, n_threads=1)
    try:
        return model, engine.n_embd, engine.n_layer, engine.metadata("general.architecture") or ""
    finally:
        engine.close()


control_dir_option = click.option(
    "--control",
    "control_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="Directory with control.json + control.safetensors.",
)


@click.command("control-export")
@control_dir_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The GGUF file to write.")
def control_export(control_dir: Path, out: Path) -> None:
    """Write a control vector as llama.cpp's control-vector GGUF (strength applied: load it unscaled)."""
    from ..overlay.control import load_control_dir
    from ..overlay.control_gguf import export_gguf

    model, hidden, n_layer, arch = _base()
    vector = load_control_dir(control_dir, base_sha256=model.sha256, hidden_size=hidden, n_layer=n_layer)
    export_gguf(vector, out, model_hint=arch)
    say(f"wrote {out}: blocks {', '.join(map(str, vector.layers))} at strength {vector.strength:g}")


@click.command("control-import")
@click.option("--gguf", "gguf_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for control.json + control.safetensors.",
)
@passphrase_option
def control_import(gguf_path: Path, out: Path, passphrase_file: Optional[Path]) -> None:
    """Admit a llama.cpp control-vector GGUF (cvector-generator, repeng) for the active base, as our two files.

    The base's shape is read from its GGUF header (nothing is loaded). Which base is active is sealed in
    the store, so with a vault the passphrase is asked; without one (a build station) it is the embedded default."""
    from .. import paths
    from ..overlay.control import save_control
    from ..overlay.control_gguf import import_gguf
    from ..runtime.embeddings import base_shape
    from ..store.bases import active_model, close_model
    from ..trust.builtin import embedded_pin, verify_pinned
    from ..vault import Vault

    if Vault.state(paths.state_dir()) == "present":
        with unlocked(passphrase_file) as vault:
            model = active_model(vault)  # verified; an imported base decrypted into a memfd
    else:
        model = verify_pinned(embedded_pin())
    try:
        hidden, n_layer = base_shape(model.path)
    finally:
        close_model(model)
    vector = import_gguf(gguf_path, base_sha256=model.sha256, hidden_size=hidden, n_layer=n_layer)
    save_control(vector, out)
    say(f"wrote {out}/control.json and {out}/control.safetensors: blocks {', '.join(map(str, vector.layers))}")


def _layers(ctx, param, value: str) -> list[int]:
    """`15`, `8-20` or `8,10,12-14`: block indices, 0-based."""
    try:
        layers: set[int] = set()
        for part in value.split(","):
            a, _, b = part.partition("-")
            layers |= set(range(int(a), int(b or a) + 1))
    except ValueError:
        raise click.BadParameter("block indices, e.g. 15, 8-20 or 8,10,12-14") from None
    if not layers:
        raise click.BadParameter("at least one block")
    return sorted(layers)


@click.command()
@click.option("--pairs", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help='JSONL, one pair a line: {"positive": [messages], "negative": [messages]}, the same user turns.')  # fmt: skip
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for control.json + control.safetensors.",
)
@click.option("--layers", callback=_layers, default="15", show_default=True, help="Blocks to steer (0-based; 1 and up).")
@click.option("--budget", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="p95 per-token KL(steered || base) on the neutral prompts, in nats, that sets the strength.")  # fmt: skip
@click.option("--neutral", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Neutral prompts, one per line (default: the demo's).")  # fmt: skip
@click.option("--max-tokens", type=click.IntRange(4, 512), default=48, show_default=True,
              help="Length of the base's replies to the neutral prompts, along which the KL is measured.")  # fmt: skip
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda on a build station with a GPU.")
@click.option("--overlay", "overlay_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Steer the base with this overlay on (a healed one: the next round): the vector is read there and "
                   "its strength calibrated against it (docs/steering.md).")  # fmt: skip
def steer(
    pairs: Path,
    out: Path,
    layers: list[int],
    budget: float,
    neutral: Path | None,
    max_tokens: int,
    device: str,
    overlay_dir: Path | None,
) -> None:
    """Make a control vector from contrastive PAIRS: mean differences per block, strength set by a KL budget."""
    import hashlib
    from importlib.resources import files

    from ..errors import UsageError
    from ..overlay.control import save_control
    from ..training.steer import load_pairs
    from ..training.steer import steer as make_vector
    from ..trust.builtin import embedded_pin, verify_pinned

    contrast = load_pairs(pairs)
    text = neutral.read_text(encoding="utf-8") if neutral else (files("appliance.demo") / "neutral-prompts.txt").read_text()
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"{neutral}: no prompts")
    model = verify_pinned(embedded_pin())
    params, digests = None, None
    if overlay_dir is not None:
        from ..overlay.files import JSON_NAME, TENSORS_NAME, load_overlay_dir
        from ..runtime.embeddings import EmbeddingTable

        params = load_overlay_dir(overlay_dir, base_sha256=model.sha256, hidden_size=EmbeddingTable(model.path).n_embd).params
        digests = {
            f"{name}_sha256": hashlib.sha256((overlay_dir / name).read_bytes()).hexdigest() for name in (JSON_NAME, TENSORS_NAME)
        }
    vector = make_vector(model, contrast, prompts, layers, budget=budget, max_tokens=max_tokens, device=device,
                         overlay=params, overlay_sha256=digests)  # fmt: skip
    save_control(vector, out)
    achieved = vector.provenance["calibration"]["achieved"]
    say(f"wrote {out}/control.json and {out}/control.safetensors: blocks {', '.join(map(str, vector.layers))}")
    say(f"strength {vector.strength:.4g}: p95 per-token KL on {len(prompts)} neutral prompts {achieved:.3f} (budget {budget:g})")


def _multiples(ctx, param, value: str) -> tuple[float, ...]:
    try:
        multiples = tuple(float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter("a comma-separated list of numbers, e.g. 0.5,1,2") from None
    if not all(0 < k <= 100 for k in multiples):
        raise click.BadParameter("each in (0, 100]")
    return multiples


@click.command("control-report")
@control_dir_option
@click.option("--prompts", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="Prompts, one per line.")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--multiples", callback=_multiples, default="0.5,1,1.5,2,3", show_default=True,
              help="Strengths to measure, as multiples of the vector's own.")  # fmt: skip
@click.option("--max-tokens", type=click.IntRange(4, 1024), default=48, show_default=True)
@click.option("--sample-seeds", type=click.IntRange(0, 16), default=1, show_default=True,
              help="Also measure loops on the chat's default sampler, with this many seeds (0: greedy only).")  # fmt: skip
@click.option("--heldout", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Held-out contrastive pairs of the concept (JSONL, as for steer): adds the behaviour score, 0 the base, "
                   "1 the base told by the positive system prompt (docs/steering.md).")  # fmt: skip
def control_report(
    control_dir: Path,
    prompts: Path,
    out: Path,
    multiples: tuple[float, ...],
    max_tokens: int,
    sample_seeds: int,
    heldout: Path | None,
) -> None:
    """A control vector's sweep of strengths: per-token KL mean/rmse/p95/max and loop rate at each; numbers, plot, page."""
    from ..errors import UsageError
    from ..overlay.control import load_control_dir
    from ..training.control_report import sweep
    from ..training.steer import load_pairs

    model, hidden, n_layer, _ = _base()
    vector = load_control_dir(control_dir, base_sha256=model.sha256, hidden_size=hidden, n_layer=n_layer)
    lines = [line.strip() for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"{prompts}: no prompts")
    pairs = load_pairs(heldout) if heldout is not None else None
    metrics = sweep(model, vector, lines, out, multiples, max_tokens=max_tokens, sample_seeds=sample_seeds, heldout=pairs)
    say(f"wrote {out}/report.md")
    for r in metrics["sweep"]:
        kl, greedy = r["kl"], r["loop_rate"]["greedy"]
        behaviour = f"behaviour {r['behaviour']:.3f}; " if "behaviour" in r else ""
        say(f"x{r['multiple']:g}: {behaviour}KL mean {kl['mean']:.3f} rmse {kl['rmse']:.3f} p95 {kl['p95']:.3f} max {kl['max']:.3f}; "
            f"loops greedy {greedy['on']:.3f} (base {greedy['off']:.3f})")  # fmt: skip
