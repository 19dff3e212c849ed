"""`appliance overlay control-report`: what a control vector costs in coherence, strength by strength.

For each strength of a sweep (multiples of the vector's calibrated strength), on the same prompts:
  KL            per-token KL(steered || base) along the steered model's own greedy replies: mean, rmse, p95, max
  loop rate     repeated 4-gram rate of the replies, greedy and on the chat's sampler, paired per prompt
                against the base (evaluate.compare_loops)
  behaviour     with held-out pairs of the concept: the behaviour score (training/behaviour.py), 0 the base,
                1 the base told by the positive system prompt
Replies come from the runtime users get (llama.cpp, the vector through `llama_set_adapter_cvec`); the
KL from the torch base with the same vector added at the same blocks (`steer.Steering`).
"""

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..overlay.control import ControlVector
from ..runtime.sampler import GREEDY, SamplingSettings
from ..runtime.session import Runtime, Session
from ..trust.builtin import VerifiedModel
from .adapter import load_base
from .behaviour import make_probes, scale, score
from .evaluate import Trajectory, compare_loops, kl_stats
from .objective import per_position_kl
from .steer import Steering, logits

if TYPE_CHECKING:
    from .dataset import Pairs

DEFAULT_MULTIPLES = (0.5, 1.0, 1.5, 2.0, 3.0)


def steered_replies(
    runtime: Runtime, prompts: list[str], vector: Optional[ControlVector], max_tokens: int, settings: SamplingSettings = GREEDY
) -> list[Trajectory]:
    out = []
    for text in prompts:
        s = Session.switched_on(runtime, vector, settings=settings)
        reply = s.generate(text, max_tokens=max_tokens)
        out.append(Trajectory(reply.prompt, reply.tokens, reply.text))
    return out


def kl_along(base, vector: ControlVector, trajs: list[Trajectory]) -> list[np.ndarray]:
    """KL(steered || base) at each position that predicts a reply token, per reply."""
    steering = Steering(base, vector.directions, vector.strength)
    kls = []
    for t in trajs:
        if t.reply:
            ids, start = t.prompt + t.reply, len(t.prompt)
            kls.append(per_position_kl(logits(base, ids, steering)[start - 1 : -1], logits(base, ids)[start - 1 : -1]).numpy())
    return kls


def sweep(
    model: VerifiedModel,
    vector: ControlVector,
    prompts: list[str],
    out: Path,
    multiples: tuple[float, ...] = DEFAULT_MULTIPLES,
    max_tokens: int = 48,
    sample_seeds: int = 1,
    base=None,
    heldout: Optional["Pairs"] = None,
) -> dict:
    """Measure the vector at each multiple of its strength; write report.md, report.json and sweep.png."""
    out.mkdir(parents=True, exist_ok=True)
    base = base if base is not None else load_base(model)
    sampled = [SamplingSettings(seed=k) for k in range(sample_seeds)]
    runtime = Runtime(model, n_ctx=2048)
    rows, samples = [], []
    try:
        probes = make_probes(runtime, heldout, max_tokens) if heldout is not None else []
        unit = scale(partial(logits, base), probes) if probes else None
        off = steered_replies(runtime, prompts, None, max_tokens)
        off_sampled = [t for s in sampled for t in steered_replies(runtime, prompts, None, max_tokens, s)]
        for k in multiples:
            v = vector.with_strength(k * vector.strength)
            on = steered_replies(runtime, prompts, v, max_tokens)
            loops = {"greedy": compare_loops(off, on)}
            if sampled:
                on_sampled = [t for s in sampled for t in steered_replies(runtime, prompts, v, max_tokens, s)]
                loops["sampled"] = compare_loops(off_sampled, on_sampled)
            row = {"multiple": k, "strength": v.strength, "kl": kl_stats(kl_along(base, v, on)), "loop_rate": loops}
            if unit is not None:
                steered = partial(logits, base, steering=Steering(base, v.directions, v.strength))
                row["behaviour"] = score(steered, probes, unit)
            rows.append(row)
            samples.append((k, on[0].text if on else ""))
    finally:
        runtime.close()
    metrics = {
        "prompts": len(prompts),
        "max_tokens": max_tokens,
        "layers": vector.layers,
        "strength": vector.strength,
        "heldout_pairs": len(probes),
        "heldout_sha256": heldout.sha256 if heldout is not None else None,
        "sweep": rows,
    }
    _plot(out / "sweep.png", rows)
    (out / "report.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(_page(metrics, prompts[0] if prompts else "", off[0].text if off else "", samples))
    return metrics


def _plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build station or the appliance
    import matplotlib.pyplot as plt

    x = [r["multiple"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for stat in ("mean", "rmse", "p95", "max"):
        left.plot(x, [r["kl"][stat] for r in rows], marker="o", label=stat)
    left.set(title="KL(steered || base) per token", xlabel="x calibrated strength", ylabel="nats", yscale="log")
    left.legend()
    for how in rows[0]["loop_rate"] if rows else ():
        right.plot(x, [r["loop_rate"][how]["on"] for r in rows], marker="o", label=how)
        right.axhline(rows[0]["loop_rate"][how]["off"], linestyle="--", color="grey")
    right.set(title="repeated 4-gram rate (dashed: base)", xlabel="x calibrated strength", ylabel="share of tokens")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _page(m: dict, prompt: str, base_text: str, samples: list[tuple[float, str]]) -> str:
    hows = list(m["sweep"][0]["loop_rate"]) if m["sweep"] else []
    scored = bool(m["sweep"]) and "behaviour" in m["sweep"][0]
    lines = [
        "# Control-vector report",
        "",
        f"Blocks {', '.join(map(str, m['layers']))}, calibrated strength {m['strength']:.4g}; {m['prompts']} prompts, "
        f"replies of up to {m['max_tokens']} tokens. KL along the steered model's own greedy replies."
        + (
            f" Behaviour score on {m['heldout_pairs']} held-out pairs: 0 the base, 1 the base told by the positive system prompt"
            " (docs/steering.md)."
            if scored
            else ""
        ),
        "",
        "| x strength | strength | "
        + ("behaviour | " if scored else "")
        + "KL mean | KL rmse | KL p95 | KL max | "
        + " | ".join(f"loops {h} (base)" for h in hows)
        + " | "
        + " | ".join(f"{h}: more/less/same" for h in hows)
        + " |",
        "|" + "---|" * (6 + scored + 2 * len(hows)),
    ]
    for r in m["sweep"]:
        kl, loops = r["kl"], r["loop_rate"]
        lines.append(
            f"| {r['multiple']:g} | {r['strength']:.4g} | "
            + (f"{r['behaviour']:.3f} | " if scored else "")
            + f"{kl['mean']:.3f} | {kl['rmse']:.3f} | {kl['p95']:.3f} | {kl['max']:.3f} | "
            + " | ".join(f"{loops[h]['on']:.3f} ({loops[h]['off']:.3f})" for h in hows)
            + " | "
            + " | ".join(f"{loops[h]['more']}/{loops[h]['less']}/{loops[h]['same']}" for h in hows)
            + " |"
        )
    lines += ["", "![sweep](sweep.png)", "", f"## The first prompt, greedy: {prompt}", "", f"- base: {base_text.strip()[:300]}"]
    lines += [f"- x{k:g}: {text.strip()[:300]}" for k, text in samples]
    return "\n".join(lines) + "\n"
