"""Steer and heal, round by round (docs/steering.md): rmse vs mean aggregation of the barrier, with controls.

Each round: steer the current model (a mean-difference vector read on it, strength calibrated so that the
p95 per-token KL(steered || current) on the neutral prompts' base replies equals the budget), heal the steer
into the Takens-LoRA (teacher: current model + vector; the student starts from the current overlay; barrier
against the base), and the healed model is the next round's current model. At each round, for the steered
model, a random vector of equal norm per block at the same strength (control), and the healed model:
  score       behaviour score on held-out prompts of the concept (training/behaviour.py): 0 base, 1 base told
  KL          per-token KL(model || base) along the model's own greedy replies to the neutral prompts
  loops       repeated 4-gram rate, greedy and sampled (the chat's default sampler), paired per prompt vs the base
  NLL         held-out NLL of the field manual's held-out conversations (ordinary text the base never saw)
Round 0 is the base, with a sweep of the first vector's strength (the raw vector at several strengths: the
demo decision compares the healed overlay with it at equal score).

The GPU machine has no llama.cpp and takes at most 64 MiB per call, so the work is split:
  here:   python bench/heal_rounds.py prepare WORK     tokenise everything and make the base's llama.cpp replies
                                                     (probes, neutral, preservation), cut the model in two parts
  there:  copy model.part1 to /tmp/parts in one call, then in the next (WORK holding model.part2):
          python3 bench/heal_rounds.py run WORK --device cuda --out $OUT
  here:   python bench/heal_rounds.py run WORK --device cpu --out DIR --rounds 1 --steps 4 --prompts 6   (reduced)
Generation there is torch's (greedy, and a numpy copy of runtime/sampler.py's `Sampler` for the sampled
replies: the same stages and settings), for every model alike, so loop rates are compared like for like.
"""

import argparse
import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "appliance" / "demo" / "radio-operator-heldout.jsonl"
PAIRS = ROOT / "appliance" / "demo" / "radio-operator-pairs.jsonl"
PARTS = ("model.part1", "model.part2")
SWEEP = (0.5, 1.0, 1.5, 2.0, 3.0)


# -- here: everything llama.cpp is needed for ------------------------------------------------------


def prepare(work: Path, max_tokens: int) -> None:
    from appliance.demo import DATASET, NEUTRAL_PROMPTS, PRESERVE_PROMPTS
    from appliance.runtime.session import Runtime
    from appliance.training.behaviour import make_probes
    from appliance.training.choices import TrainConfig
    from appliance.training.dataset import load_dataset, load_pairs
    from appliance.training.evaluate import replies
    from appliance.training.examples import preservation_examples, split_examples
    from appliance.trust.builtin import embedded_pin, verify_pinned

    model = verify_pinned(embedded_pin())
    work.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs(PAIRS)
    neutral = [line.strip() for line in NEUTRAL_PROMPTS.read_text().splitlines() if line.strip()]
    held, _ = split_examples(model, load_dataset(DATASET), TrainConfig(holdout=0.15, seed=0))
    preserve = preservation_examples(model, [x for x in PRESERVE_PROMPTS.read_text().splitlines() if x.strip()], max_tokens)
    runtime = Runtime(model, n_ctx=2048)
    try:
        tok = lambda messages: runtime.engine.tokenize(runtime.template.render(messages))  # noqa: E731
        contrast = [(tok(p.positive), tok(p.negative)) for p in pairs.pairs]
        concept = [tok([m for m in p.positive if m["role"] != "system"]) for p in pairs.pairs]
        probes = make_probes(runtime, load_pairs(HELDOUT), max_tokens)
        base_neutral = [(t.prompt, t.reply) for t in replies(runtime, neutral, None, max_tokens)]
        ends = [t for t in range(runtime.engine.n_vocab) if runtime.engine.is_end_of_generation(t)]
    finally:
        runtime.close()
    pack = lambda xs: [(ex.ids, ex.target) for ex in xs]  # noqa: E731
    torch.save(
        {"contrast": contrast, "concept": concept, "probes": [asdict(p) for p in probes], "neutral": [p for p, _ in base_neutral],
         "base_neutral": base_neutral, "preserve": pack(preserve), "held": pack(held), "ends": ends,
         "model_sha256": model.sha256, "model_name": model.name, "max_tokens": max_tokens, "pairs_sha256": pairs.sha256},
        work / "heal.pt",
    )  # fmt: skip
    data = model.path.read_bytes()
    (work / PARTS[0]).write_bytes(data[: len(data) // 2])
    (work / PARTS[1]).write_bytes(data[len(data) // 2 :])
    print(f"wrote {work}: {len(contrast)} pairs, {len(probes)} probes, {len(neutral)} neutral, {len(preserve)} preservation, "
          f"{len(held)} held-out conversations; model in 2 parts")  # fmt: skip


# -- there: torch only -------------------------------------------------------------------------------


def _model(saved: dict, device: str, parts: list[Path]):
    from appliance.errors import HashMismatch
    from appliance.trust.builtin import VerifiedModel

    if device == "cpu":
        from appliance.trust.builtin import embedded_pin, verify_pinned

        return verify_pinned(embedded_pin())
    path = Path("/tmp/heal-base.gguf")
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != saved["model_sha256"]:
        raise HashMismatch(path, saved["model_sha256"], digest.hexdigest())
    return VerifiedModel(saved["model_name"], 1, path, saved["model_sha256"])


class Picker:
    """The chat's default sampler (runtime/sampler.py `Sampler`, numpy): penalty, temperature, top-k, top-p, draw."""

    def __init__(self, seed: int, temperature=0.7, top_k=40, top_p=0.95, repeat_penalty=1.1, repeat_last_n=64):
        self.rng = np.random.default_rng(seed)
        self.t, self.k, self.p, self.rp, self.n = temperature, top_k, top_p, repeat_penalty, repeat_last_n

    def __call__(self, logits: torch.Tensor, history: list[int]) -> int:
        z = logits.float().cpu().numpy().astype(np.float64)
        recent = np.unique(np.asarray(history[-self.n :]))
        z[recent] = np.where(z[recent] > 0, z[recent] / self.rp, z[recent] * self.rp)
        z = z / self.t
        cand = np.argpartition(z, -self.k)[-self.k :]
        cand = cand[np.argsort(-z[cand], kind="stable")]
        probs = np.exp(z[cand] - z[cand[0]])
        probs /= probs.sum()
        keep = int(np.searchsorted(np.cumsum(probs), self.p)) + 1
        cand, probs = cand[:keep], probs[:keep] / probs[:keep].sum()
        return int(cand[self.rng.choice(len(cand), p=probs)])


class Bench:
    def __init__(self, saved: dict, base, cfg, n_prompts: int, sample_seeds: int):
        from appliance.training.batching import Example
        from appliance.training.behaviour import Probe, scale
        from appliance.training.heal import adapter_for

        self.saved, self.base, self.cfg, self.device = saved, base, cfg, next(base.parameters()).device
        self.ends = set(saved["ends"])
        self.neutral = saved["neutral"][:n_prompts]
        self.base_neutral = [
            Example(torch.tensor(p + r), torch.tensor([False] * len(p) + [True] * len(r)))
            for p, r in saved["base_neutral"][:n_prompts]
            if r
        ]
        self.held = [Example(i, t) for i, t in saved["held"]]
        self.preserve = [Example(i, t) for i, t in saved["preserve"]]
        self.probes = [Probe(**p) for p in saved["probes"]]
        self.sample_seeds = sample_seeds
        self.bare = adapter_for(base, None, cfg, self.device)
        self.scale = scale(self.fn(self.bare, False, None), self.probes)
        self.base_trajs = self.replies(self.bare, False, None)

    def fn(self, adapter, on: bool, steering):
        def logits(ids: list[int]) -> torch.Tensor:
            from appliance.training.batching import Batch

            with torch.no_grad(), steering.active() if steering is not None else nullcontext():
                return adapter.logits_at(Batch.every_position(torch.tensor(ids, device=self.device)), on=on)

        return logits

    def replies(self, adapter, on: bool, steering) -> dict:
        from appliance.training.evaluate import Trajectory
        from appliance.training.heal import generate

        mt, is_end = self.saved["max_tokens"], self.ends.__contains__
        out = {"greedy": generate(adapter, self.neutral, mt, is_end, on=on, steering=steering)}
        sampled = []
        for s in range(self.sample_seeds):
            pickers = [Picker(1000 * s + i) for i in range(len(self.neutral))]  # one generator per prompt and seed

            def pick(logits, seq, row, pickers=pickers):
                return pickers[row](logits, seq)

            sampled += generate(adapter, self.neutral, mt, is_end, on=on, steering=steering, pick=pick)
        out["sampled"] = sampled
        return {
            how: [Trajectory(p, r) for p, r in zip(self.neutral * (len(rs) // len(self.neutral)), rs)] for how, rs in out.items()
        }

    def kl(self, adapter, on: bool, steering, trajs) -> dict:
        from appliance.training.batching import Batch, Example
        from appliance.training.evaluate import kl_stats
        from appliance.training.objective import per_position_kl

        kls = []
        with torch.no_grad():
            for t in trajs:
                if not t.reply:
                    continue
                ex = Example(torch.tensor(t.prompt + t.reply), torch.tensor([False] * len(t.prompt) + [True] * len(t.reply)))
                batch = Batch.of([ex], self.device)
                with steering.active() if steering is not None else nullcontext():
                    on_logits = adapter.logits_at(batch, on=on)
                kls.append(per_position_kl(on_logits, self.bare.logits_at(batch, on=False)).cpu().numpy())
        return kl_stats(kls)

    def measure(self, name: str, adapter, on: bool, steering) -> dict:
        from appliance.training.behaviour import score
        from appliance.training.evaluate import compare_loops
        from appliance.training.terms import heldout_nll

        t0 = time.perf_counter()
        trajs = self.replies(adapter, on, steering)
        with steering.active() if steering is not None else nullcontext():
            nll = heldout_nll(adapter, self.held, self.cfg, on=on)
        row = {
            "model": name,
            "score": score(self.fn(adapter, on, steering), self.probes, self.scale),
            "kl": self.kl(adapter, on, steering, trajs["greedy"]),
            "loops": {how: compare_loops(self.base_trajs[how], trajs[how]) for how in trajs},
            "nll": nll,
            "seconds": time.perf_counter() - t0,
            "sample": trajs["greedy"][0].reply,
        }
        return row


def calibrate_on(bench: Bench, adapter, on: bool, directions: dict, budget: float) -> tuple[float, float]:
    """The strength where p95 KL(current + vector || current) on the base's neutral replies = budget."""
    from appliance.training.batching import Batch
    from appliance.training.objective import per_position_kl
    from appliance.training.steer import Steering, calibrate

    batch = Batch.of(bench.base_neutral, bench.device)
    with torch.no_grad():
        ref = adapter.logits_at(batch, on=on)

        def p95(c: float) -> float:
            with Steering(bench.base, directions, c).active():
                return float(torch.quantile(per_position_kl(adapter.logits_at(batch, on=on), ref), 0.95))

        strength, log = calibrate(p95, budget)
    return strength, dict(log)[strength]


def random_like(directions: dict, seed: int) -> dict:
    g = np.random.default_rng(seed)
    out = {}
    for n, d in directions.items():
        r = g.standard_normal(d.shape)
        out[n] = (r / np.linalg.norm(r) * np.linalg.norm(d)).astype(np.float32)
    return out


def run(args) -> None:
    from appliance.overlay.control import ControlVector
    from appliance.training.adapter import load_base
    from appliance.training.choices import TrainConfig
    from appliance.training.heal import adapter_for, heal
    from appliance.training.steer import Steering, mean_differences

    saved = torch.load(args.work / "heal.pt")
    device = args.device
    model = _model(saved, device, [args.parts / PARTS[0], args.work / PARTS[1]])
    t0 = time.perf_counter()
    base = load_base(model, device)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, batch=args.batch, tau=args.tau, lam=args.lam, precision="fp32",
                      device=device.split(":")[0], seed=0)  # fmt: skip
    bench = Bench(saved, base, cfg, args.prompts, args.sample_seeds)
    layers = [int(x) for x in args.layers.split(",")]
    contrast = saved["contrast"]
    concept = saved["concept"]
    out: dict = {"config": {**vars(args), "work": str(args.work), "parts": str(args.parts), "out": str(args.out)},
                 "scale": asdict(bench.scale), "rows": [], "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}  # fmt: skip
    print(f"loaded in {time.perf_counter() - t0:.1f} s; scale {bench.scale}", flush=True)
    print("| agg | round | model | strength | score | KL mean | KL rmse | KL p95 | loops greedy (base) more/less | loops sampled (base) "
          "more/less | NLL |\n|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip

    def add(row: dict, **extra) -> None:
        out["rows"].append({**row, **extra})
        print(_line(out["rows"][-1]), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "heal_rounds.json").write_text(json.dumps(out, indent=1))

    add(bench.measure("base", bench.bare, False, None), agg="-", round=0, strength=0.0)
    first = mean_differences(base, contrast, layers)
    s1, achieved = calibrate_on(bench, bench.bare, False, first, args.budget)
    out["first_vector"] = {"strength": s1, "p95": achieved, "norms": {n: float(np.linalg.norm(d)) for n, d in first.items()}}
    raw = {}
    for k in SWEEP if args.sweep else (1.0,):
        raw[k] = bench.measure(f"raw x{k:g}", bench.bare, False, Steering(base, first, k * s1))
        add(raw[k], agg="-", round=0, strength=k * s1)
    overlays: dict = {"first_vector": first, "first_strength": s1}
    aggs = args.aggs.split(",")
    inits: dict = dict.fromkeys(aggs)
    for r in range(1, args.rounds + 1):  # the aggregates side by side, round by round: a cut-short run still compares them
        for agg in aggs:
            init = inits[agg]
            current = adapter_for(base, init, cfg, bench.device)
            on = init is not None
            directions = first if not on else mean_differences(base, contrast, layers, forward=bench.fn(current, True, None))
            strength, _ = calibrate_on(bench, current, on, directions, args.budget) if on else (s1, None)
            meta = dict(agg=agg, round=r, strength=strength)
            # round 1 steers the base with the first vector: that row is the sweep's x1
            steered = raw[1.0] if not on else bench.measure("steered", current, on, Steering(base, directions, strength))
            add(steered, **meta, model="steered")
            noise = random_like(directions, r)
            add(bench.measure("random", current, on, Steering(base, noise, strength)), **meta)
            vector = ControlVector(directions, strength, model.sha256)
            if args.heal_random and r == 1 and agg == aggs[0]:  # the matched control: heal a random vector by the same recipe
                control = heal(base, ControlVector(noise, strength, model.sha256), concept, bench.preserve, replace(cfg, agg=agg),
                               bench.ends.__contains__, max_tokens=saved["max_tokens"])  # fmt: skip
                add(
                    bench.measure("healed random", adapter_for(base, control.overlay.params, cfg, bench.device), True, None),
                    **meta,
                )
            t = time.perf_counter()
            result = heal(base, vector, concept, bench.preserve, replace(cfg, agg=agg), bench.ends.__contains__, init=init,
                          max_tokens=saved["max_tokens"])  # fmt: skip
            init = inits[agg] = result.overlay.params
            healed = adapter_for(base, init, cfg, bench.device)
            add(bench.measure("healed", healed, True, None), **meta, heal={"seconds": time.perf_counter() - t,
                "teacher_kl_before": result.kl_before, "teacher_kl_after": result.kl_after,
                "final_barrier": result.log[-1].barrier, "final_fit": result.log[-1].nll})  # fmt: skip
            overlays[f"{agg}-r{r}"] = {"params": {k: getattr(init, k) for k in ("A", "W", "B")}, "delays": list(init.delays),
                                       "alpha": init.alpha, "activation": init.activation, "vector": directions, "strength": strength}  # fmt: skip
            torch.save(overlays, args.out / "overlays.pt")
            (args.out / "heal_rounds.md").write_text(_page(out))
    (args.out / "heal_rounds.md").write_text(_page(out))


def _line(row: dict) -> str:
    loops = row["loops"]
    cells = [
        f"{loops[h]['on']:.3f} ({loops[h]['off']:.3f}) {loops[h]['more']}/{loops[h]['less']}"
        for h in ("greedy", "sampled")
        if h in loops
    ]
    cells += ["-"] * (2 - len(cells))
    kl = row["kl"]
    return (f"| {row.get('agg', '-')} | {row.get('round', 0)} | {row['model']} | {row.get('strength', 0):.3g} | {row['score']:.3f} | "
            f"{kl['mean']:.3f} | {kl['rmse']:.3f} | {kl['p95']:.3f} | {cells[0]} | {cells[1]} | {row['nll']:.3f} |")  # fmt: skip


def _page(out: dict) -> str:
    head = ("| agg | round | model | strength | score | KL mean | KL rmse | KL p95 | loops greedy (base) more/less "
            "| loops sampled (base) more/less | NLL |\n|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [f"# Steer and heal, round by round ({out['device']})", "", f"config: `{json.dumps(out['config'])}`", "", head]
    lines += [_line(r) for r in out["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["prepare", "run"])
    ap.add_argument("work", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=Path("bench/out/heal"))
    ap.add_argument("--parts", type=Path, default=Path("/tmp/parts"), help="where an earlier call left model.part1")
    ap.add_argument("--max-tokens", type=int, default=48, help="prepare: reply length everywhere")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--aggs", default="rmse,mean")
    ap.add_argument("--layers", default="15")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tau", type=float, default=0.25)
    ap.add_argument("--lam", type=float, default=4.0)
    ap.add_argument("--prompts", type=int, default=60, help="neutral prompts measured")
    ap.add_argument("--sample-seeds", type=int, default=2)
    ap.add_argument("--heal-random", action="store_true", help="round 1: also heal the random vector (a matched control)")
    ap.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True, help="the raw vector at several strengths")
    args = ap.parse_args()
    if args.mode == "prepare":
        prepare(args.work, args.max_tokens)
    else:
        run(args)


if __name__ == "__main__":
    main()
