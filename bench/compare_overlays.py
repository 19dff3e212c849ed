"""Honest comparison on the demo data: Takens-LoRA (rmse and mean barrier) vs a standard PEFT LoRA.

Same data, same held-out split, same steps, same seed, same objective
(NLL + lambda * relu(agg KL - tau)); the PEFT LoRA (rank 1 on q_proj of the
first 8 layers: 9,216 parameters) is sized to the overlay (rank 8: 9,256).
Every variant is judged the same way, in torch: held-out in-domain NLL,
KL(variant || base) along its own greedy replies to neutral prompts, and the
repeated-4-gram loop rate of those replies.

Run: ./run compare [--steps N]   (CPU: about half an hour at the default)
On a GPU machine, after `bench/gpu_training.py prepare .gpu` here:
     python3 bench/compare_overlays.py --prepared .gpu --device cuda
"""

import argparse
import contextlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from appliance.demo import DATASET, NEUTRAL_PROMPTS
from appliance.overlay.takens_torch import TakensLoRA
from appliance.training.adapter import TakensAdapter, load_base
from appliance.training.batching import Batch
from appliance.training.choices import TrainConfig
from appliance.training.dataset import load_dataset
from appliance.training.evaluate import kl_along, kl_stats, loop_rate, torch_greedy
from appliance.training.examples import split_examples
from appliance.training.terms import heldout_nll
from appliance.training.trainer import optimise
from appliance.trust.builtin import embedded_pin, verify_pinned


class PeftLoraAdapter:
    """A standard LoRA through peft; its reference pass is the same model under `disable_adapter()`."""

    def __init__(self, base, rank: int, layers: list[int]):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=["q_proj"], layers_to_transform=layers)
        self.module = get_peft_model(base, config)

    precision = "fp32"

    def logits_at(self, batch: Batch, on: bool = True) -> torch.Tensor:
        with contextlib.nullcontext() if on else self.module.disable_adapter():
            return self.module(input_ids=batch.ids).logits[batch.rows, batch.cols].float()

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.logits_at(Batch.every_position(ids))

    def reference(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.logits_at(Batch.every_position(ids), on=False)


def judge(adapter, held, cfg, prompts, is_end, max_tokens) -> dict:
    replies = [torch_greedy(adapter, p, max_tokens, is_end) for p in prompts]
    kl = kl_stats([kl_along(adapter, p, r) for p, r in zip(prompts, replies) if r])
    return {
        "params": sum(p.numel() for p in adapter.module.parameters() if p.requires_grad),
        "heldout_nll": heldout_nll(adapter, held, cfg),
        "kl_rmse": kl["rmse"],
        "kl_max": kl["max"],
        "loop_rate": float(np.mean([loop_rate(r) for r in replies])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prepared", type=Path, default=None, help="examples from bench/gpu_training.py prepare")
    args = ap.parse_args()

    cfg = TrainConfig(steps=args.steps, lr=3e-3, tau=0.3, lam=4.0, agg="rmse", seed=0, holdout=0.15, device=args.device)
    if args.prepared is not None:
        from gpu_training import load_prepared

        model, held, trainset, _, prompts, end_tokens, _ = load_prepared(args.prepared, args.device)
        is_end = end_tokens.__contains__
    else:
        from appliance.runtime.session import Runtime

        model = verify_pinned(embedded_pin())
        held, trainset = split_examples(model, load_dataset(DATASET), cfg)
        runtime = Runtime(model, n_ctx=1024)
        render = runtime.template.render
        prompts = [
            runtime.engine.tokenize(render([{"role": "user", "content": line}]))
            for line in NEUTRAL_PROMPTS.read_text().splitlines()
        ]
        is_end = runtime.engine.is_end_of_generation
    prompts = prompts[: args.prompts]

    base = load_base(model, args.device)
    rows = {}
    untouched = TakensAdapter(
        base, TakensLoRA(base.config.hidden_size, cfg.rank, cfg.delays, cfg.alpha, cfg.activation).to(args.device)
    )  # B = 0
    rows["base (no adapter)"] = {**judge(untouched, held, cfg, prompts, is_end, args.max_tokens), "params": 0}
    for name, variant in (("takens-lora, rmse barrier", cfg), ("takens-lora, mean barrier", replace(cfg, agg="mean"))):
        torch.manual_seed(variant.seed)
        overlay = TakensLoRA(base.config.hidden_size, variant.rank, variant.delays, variant.alpha, variant.activation).to(
            args.device
        )
        adapter = TakensAdapter(base, overlay)
        optimise(adapter, trainset, variant, None)
        rows[name] = judge(adapter, held, variant, prompts, is_end, args.max_tokens)
    torch.manual_seed(cfg.seed)
    lora = PeftLoraAdapter(base, rank=1, layers=list(range(8)))  # last: peft edits the base in place
    lora.module.to(args.device)
    optimise(lora, trainset, cfg, None)
    rows["peft lora r=1, q_proj x 8 layers, rmse barrier"] = judge(lora, held, cfg, prompts, is_end, args.max_tokens)

    print(
        f"steps {cfg.steps}, seed {cfg.seed}, lr {cfg.lr}, lambda {cfg.lam}, tau {cfg.tau}; "
        f"{len(trainset)} training / {len(held)} held-out conversations; {len(prompts)} neutral prompts"
    )
    print("| variant | trainable params | held-out NLL | neutral KL rmse | neutral KL max | loop rate |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['params']} | {r['heldout_nll']:.3f} | {r['kl_rmse']:.3f} | {r['kl_max']:.3f} | {r['loop_rate']:.3f} |"
        )


if __name__ == "__main__":
    main()
