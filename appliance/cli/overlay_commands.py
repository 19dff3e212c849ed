"""`appliance overlay ...`: build-station work on overlays (training)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..overlay.params import ACTIVATIONS
from ..training.choices import AGGREGATES, PRECISIONS, TrainConfig
from .build_base import base_option, resolve_build_base
from .output import say

if TYPE_CHECKING:
    from ..training.trainer import StepLog  # torch: the CLI starts without it

RECIPE = TrainConfig()  # the options' defaults: one place, torch-free


@click.group()
def overlay() -> None:
    """Train Takens-LoRA overlays for the active base model."""


def _delays(ctx, param, value: str) -> tuple[int, ...]:
    try:
        delays = tuple(int(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers, e.g. 0,1,2,4,8") from None
    if delays[0] != 0 or any(a >= b for a, b in zip(delays, delays[1:])):
        raise click.BadParameter("strictly increasing, starting at 0")
    return delays


@overlay.command()
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None, help="JSONL conversations.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for overlay.json + overlay.safetensors.",
)
@click.option("--rank", type=click.IntRange(1, 256), default=RECIPE.rank, show_default=True)
@click.option("--delays", callback=_delays, default=",".join(map(str, RECIPE.delays)), show_default=True)
@click.option("--alpha", type=float, default=RECIPE.alpha, show_default=True)
@click.option("--activation", type=click.Choice(ACTIVATIONS), default=RECIPE.activation, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=RECIPE.steps, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=RECIPE.lr, show_default=True)
@click.option("--lam", "--lambda", "lam", type=click.FloatRange(0), default=RECIPE.lam, show_default=True,
              help="Weight of the KL barrier.")  # fmt: skip
@click.option(
    "--tau", type=click.FloatRange(0), default=RECIPE.tau, show_default=True, help="KL (nats) allowed before the barrier acts."
)
@click.option("--agg", type=click.Choice(AGGREGATES), default=RECIPE.agg, show_default=True)
@click.option("--seed", type=int, default=RECIPE.seed, show_default=True)
@click.option("--holdout", type=click.FloatRange(0, 0.9), default=RECIPE.holdout, show_default=True)
@click.option("--max-len", type=click.IntRange(16, 4096), default=RECIPE.max_len, show_default=True)
@click.option("--device", default=RECIPE.device, show_default=True, help="cpu, or cuda on a build station with a GPU.")
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=RECIPE.batch,
    show_default=True,
    help="Conversations per step (and as many preservation replies), side by side; under torchrun, over all processes.",
)
@click.option("--precision", type=click.Choice(PRECISIONS), default=RECIPE.precision, show_default=True,
              help="The base's arithmetic: auto is bf16 autocast on a GPU, float32 on the CPU.")  # fmt: skip
@click.option(
    "--preserve",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Neutral prompts, one per line: the base's replies to them are held under the same KL barrier.",
)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out.")
@click.option("--heal", "heal_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Heal this control vector (control.json + control.safetensors) into the overlay instead of training on "
                   "--data: the overlay learns the steered model's replies to the --pairs' user turns (docs/steering.md).")  # fmt: skip
@click.option("--pairs", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="With --heal: the contrastive pairs of the concept; their user turns, without a system prompt, are the prompts.")  # fmt: skip
@click.option("--init", "init_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="With --heal: start from this overlay (the last round's healed one); the teacher is the base with it on, "
                   "steered by the vector (docs/steering.md).")  # fmt: skip
@base_option
def train(
    data: Path | None,
    out: Path,
    preserve: Path | None,
    resume: bool,
    heal_dir: Path | None,
    pairs: Path | None,
    init_dir: Path | None,
    base_name: str | None,
    passphrase_file: Path | None,
    **options,
) -> None:
    """Train an overlay on DATA, or heal a control vector into one (--heal); progress shows both loss terms."""
    from ..errors import UsageError

    if data is not None and heal_dir is not None:
        raise UsageError("give either --data (train on conversations) or --heal (heal a control vector), not both")
    if pairs is not None and heal_dir is None:
        raise UsageError("--pairs goes with --heal")
    if init_dir is not None and heal_dir is None:
        raise UsageError("--init goes with --heal")
    cfg = TrainConfig(**options)
    if heal_dir is not None:
        if pairs is None:
            raise UsageError("--heal needs --pairs: the concept's prompts")
        if resume:
            raise UsageError("--resume is for training on --data; a heal is short, run it again")
        _heal(heal_dir, pairs, out, preserve, cfg, init_dir, base_name, passphrase_file)
        return
    if data is None:
        raise UsageError("give --data (conversations to train on) or --heal (a control vector to heal)")
    from ..training.dataset import load_dataset, read_prompts

    dataset = load_dataset(data)
    prompts = read_prompts(preserve) if preserve else None
    from ..training.trainer import train as run_training  # torch: imported once the inputs are read

    def terms(entry) -> str:
        return f"nll {entry.nll:.3f}  barrier {entry.barrier:.3f}  kl[{cfg.agg}] {entry.kl:.3f}"

    with resolve_build_base(base_name, passphrase_file) as model, _progress("training", cfg.steps, terms) as on_step:
        result = run_training(model, dataset, cfg, out, on_step=on_step, resume=resume, preserve_prompts=prompts)
    say(f"wrote {out}/overlay.json and {out}/overlay.safetensors")
    if result.heldout_nll_on is not None:
        say(f"held-out NLL: base {result.heldout_nll_off:.4f}, overlay {result.heldout_nll_on:.4f}")
    say(f"training speed: {result.tokens_per_second:.0f} tokens/s on {cfg.device}")


@contextmanager
def _progress(what: str, steps: int, terms: Callable[["StepLog"], str]) -> Iterator[Callable[["StepLog"], None]]:
    """A progress bar over a job's steps; yields the job's `on_step`, which shows `terms(entry)` at each."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn(what),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[terms]}", markup=False),  # kl[rmse] is no markup tag
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(what, total=steps, terms="")
        yield lambda entry: progress.update(task, completed=entry.step, terms=terms(entry))


def _heal(
    control_dir: Path,
    pairs_path: Path,
    out: Path,
    preserve: Path | None,
    cfg: TrainConfig,
    init_dir: Path | None,
    base_name: str | None,
    passphrase_file: Path | None,
) -> None:
    """`train --heal` (training/jobs.py `heal_overlay`)."""
    from ..demo import PRESERVE_PROMPTS
    from ..training.dataset import load_pairs, read_prompts

    contrast = load_pairs(pairs_path)
    neutral = read_prompts(preserve or PRESERVE_PROMPTS)
    from ..training.jobs import heal_overlay  # torch: imported once the inputs are read

    def terms(entry) -> str:
        return f"kl to teacher {entry.nll:.3f}  barrier {entry.barrier:.3f}  kl[{cfg.agg}] {entry.kl:.3f}"

    with resolve_build_base(base_name, passphrase_file) as model, _progress("healing", cfg.steps, terms) as on_step:
        result = heal_overlay(model, control_dir, contrast, neutral, cfg, out, init_dir, on_step=on_step)
    say(f"wrote {out}/overlay.json and {out}/overlay.safetensors")
    say(f"KL(teacher || overlay) per position on the concept: {result.kl_before:.4f} before, {result.kl_after:.4f} after")


@overlay.command()
@click.option(
    "--overlay",
    "overlay_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="Directory with overlay.json + overlay.safetensors (build station: the trainer's --out).",
)
@click.option(
    "--prompts",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="Neutral prompts, one per line.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The overlay's training data: its held-out split (recovered from the overlay's own config) gives the in-domain NLL.",
)
@click.option("--max-tokens", type=click.IntRange(8, 1024), default=96, show_default=True)
@click.option("--sample-seeds", type=click.IntRange(0, 16), default=2, show_default=True,
              help="Also measure loops on replies from the chat's default sampler, with this many seeds (0: greedy only).")  # fmt: skip
@base_option
def report(
    overlay_dir: Path,
    prompts: Path,
    out: Path,
    data: Path | None,
    max_tokens: int,
    sample_seeds: int,
    base_name: str | None,
    passphrase_file: Path | None,
) -> None:
    """What the overlay does to the model (on vs off), and what it costs in coherence: numbers, plots, one page."""
    from ..training.dataset import load_dataset, read_prompts

    prompt_lines = read_prompts(prompts)
    dataset = load_dataset(data) if data is not None else None
    from ..training.jobs import report_overlay  # torch: imported once the inputs are read

    with resolve_build_base(base_name, passphrase_file) as model:
        metrics = report_overlay(
            model, overlay_dir, prompt_lines, out, data=dataset, max_tokens=max_tokens, sample_seeds=sample_seeds
        )
    kl = metrics["kl"]
    say(f"wrote {out}/report.md")
    say(f"KL per position: mean {kl['mean']:.3f} rmse {kl['rmse']:.3f} p95 {kl['p95']:.3f} max {kl['max']:.3f}")
    for how, loops in metrics["loop_rate"].items():
        say(f"loop rate, {how}: off {loops['off']:.3f} on {loops['on']:.3f} "
                   f"(per prompt: {loops['more']} more, {loops['less']} less, {loops['same']} same)")  # fmt: skip
