"""Overlay training for a base of real size on one GPU: transformers' Llama with Llama 3.1 8B's shapes, random bf16
weights, built on the GPU machine itself (nothing to carry), trained by the Takens-LoRA step of `gpu_training.measure`
(the base's one cached pass, then the overlay's steps: base frozen, gradients to the inputs only).
    python3 bench/gpu_training_8b.py [--batch 4,16] [--steps 8] [--tokens 384] [--checkpointing] [--profile] [--tiny]
Prints, for each batch size on the one base, tokens/s, MFU (of the H100/H200's 989 TFLOP/s dense bf16) and peak
memory; --profile then adds the operators that took the card's time in the last run; --tiny runs a 2-layer toy on the CPU.
"""

import argparse
import time
from contextlib import nullcontext

import torch
from gpu_training import measure
from transformers import LlamaConfig, LlamaForCausalLM

from appliance.training.batching import Example
from appliance.training.choices import TrainConfig

LLAMA_31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0)  # fmt: skip
TINY = dict(
    hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=1000
)


def examples(n: int, tokens: int, vocab: int, seed: int) -> list[Example]:
    """Random conversations of `tokens` ids, the second half an assistant reply."""
    g = torch.Generator().manual_seed(seed)
    target = torch.arange(tokens) >= tokens // 2
    return [Example(torch.randint(0, vocab, (tokens,), generator=g), target) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="4", help="conversations per step; a comma list runs each on the one base")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=384)
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the base's blocks")
    ap.add_argument("--profile", action="store_true", help="torch.profiler over the last batch size's run")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    device = "cpu" if a.tiny else "cuda"
    shapes = TINY if a.tiny else LLAMA_31_8B
    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        base = LlamaForCausalLM(LlamaConfig(**shapes, max_position_embeddings=8192, tie_word_embeddings=False)).to(torch.bfloat16)
    base.requires_grad_(False).eval()
    if a.checkpointing:
        base.gradient_checkpointing_enable()
        base.train()  # transformers checkpoints only in training mode; the base has no dropout
    built = time.perf_counter() - t
    V = int(shapes["vocab_size"])
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    batches = [int(b) for b in a.batch.split(",")]
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    for batch in batches:
        n = batch * a.steps
        cfg = TrainConfig(device=device, batch=batch, steps=a.steps, lr=3e-3, max_len=a.tokens, checkpoint_every=10**6,
                          precision="bf16")  # fmt: skip
        sets = examples(2, a.tokens, V, 1), examples(n, a.tokens, V, 2), examples(n, a.tokens, V, 3)
        prof = torch.profiler.profile(activities=activities) if a.profile and batch == batches[-1] else None
        with prof or nullcontext():
            row = measure(base, cfg, *sets, None, evals=1)
        mfu = f"{100 * row['mfu']:.1f} %" if row["mfu"] is not None else "-"
        peak = f"{row['peak_gib']:.1f} GiB" if row["peak_gib"] is not None else "-"
        print(f"8B-shaped overlay training on {name} (base built in {built:.0f} s): batch {batch} x {a.tokens} tokens, "
              f"{a.steps} steps{', checkpointing' if a.checkpointing else ''}: {row['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, "
              f"peak {peak}, {row['seconds']:.1f} s{' (profiled: slower)' if prof else ''}", flush=True)  # fmt: skip
        if device == "cuda":
            torch.cuda.empty_cache()
    if prof is not None:
        print(
            prof.key_averages().table(
                sort_by="cuda_time_total" if device == "cuda" else "cpu_time_total", row_limit=25, max_name_column_width=70
            )
        )


if __name__ == "__main__":
    main()
