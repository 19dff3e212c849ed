"""`appliance overlay control-export | control-import | steer | control-report`: build-station work on control vectors."""

from pathlib import Path
from typing import Optional

import click

from .build_base import base_option, resolve_build_base
from .output import say

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
@base_option
def control_export(control_dir: Path, out: Path, base_name: Optional[str], passphrase_file: Optional[Path]) -> None:
    """Write a control vector as llama.cpp's control-vector GGUF (strength applied: load it unscaled)."""
    from ..training.jobs import export_control

    with resolve_build_base(base_name, passphrase_file) as model:
        vector = export_control(model, control_dir, out)
    say(f"wrote {out}: blocks {', '.join(map(str, vector.layers))} at strength {vector.strength:g}")


@click.command("control-import")
@click.option("--gguf", "gguf_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for control.json + control.safetensors.",
)
@base_option
def control_import(gguf_path: Path, out: Path, base_name: Optional[str], passphrase_file: Optional[Path]) -> None:
    """Admit a llama.cpp control-vector GGUF (cvector-generator, repeng) for the base, as our two files.

    The base's shape is read from its GGUF header (nothing is loaded)."""
    from ..training.jobs import import_control

    with resolve_build_base(base_name, passphrase_file) as model:
        vector = import_control(model, gguf_path, out)
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
@base_option
def steer(
    pairs: Path,
    out: Path,
    layers: list[int],
    budget: float,
    neutral: Path | None,
    max_tokens: int,
    device: str,
    overlay_dir: Path | None,
    base_name: str | None,
    passphrase_file: Path | None,
) -> None:
    """Make a control vector from contrastive PAIRS: mean differences per block, strength set by a KL budget."""
    from ..demo import NEUTRAL_PROMPTS
    from ..training.dataset import load_pairs, read_prompts

    contrast = load_pairs(pairs)
    prompts = read_prompts(neutral or NEUTRAL_PROMPTS)
    from ..training.jobs import steer_vector  # torch: imported once the inputs are read

    with resolve_build_base(base_name, passphrase_file) as model:
        vector = steer_vector(model, contrast, prompts, layers, out, budget=budget, max_tokens=max_tokens, device=device,
                              overlay_dir=overlay_dir)  # fmt: skip
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
@base_option
def control_report(
    control_dir: Path,
    prompts: Path,
    out: Path,
    multiples: tuple[float, ...],
    max_tokens: int,
    sample_seeds: int,
    heldout: Path | None,
    base_name: str | None,
    passphrase_file: Path | None,
) -> None:
    """A control vector's sweep of strengths: per-token KL mean/rmse/p95/max and loop rate at each; numbers, plot, page."""
    from ..training.dataset import load_pairs, read_prompts

    lines = read_prompts(prompts)
    pairs = load_pairs(heldout) if heldout is not None else None
    from ..training.jobs import report_control  # torch: imported once the inputs are read

    with resolve_build_base(base_name, passphrase_file) as model:
        metrics = report_control(model, control_dir, lines, out, multiples, max_tokens=max_tokens, sample_seeds=sample_seeds,
                                 heldout=pairs)  # fmt: skip
    say(f"wrote {out}/report.md")
    for r in metrics["sweep"]:
        kl, greedy = r["kl"], r["loop_rate"]["greedy"]
        behaviour = f"behaviour {r['behaviour']:.3f}; " if "behaviour" in r else ""
        say(f"x{r['multiple']:g}: {behaviour}KL mean {kl['mean']:.3f} rmse {kl['rmse']:.3f} p95 {kl['p95']:.3f} max {kl['max']:.3f}; "
            f"loops greedy {greedy['on']:.3f} (base {greedy['off']:.3f})")  # fmt: skip
