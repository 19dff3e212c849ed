"""`appliance overlay report`: one page a person can read in a minute, with a plot per measure."""

import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..overlay.files import Overlay
from ..overlay.takens_torch import TakensLoRA
from ..runtime.sampler import SamplingSettings
from ..runtime.session import Runtime
from ..trust.builtin import VerifiedModel
from .adapter import TakensAdapter, load_base
from .batching import Example
from .evaluate import compare_loops, kl_stats, nll_llama, participation_ratio, replies, trajectory_measures
from .terms import mean_nll


def _bars(path: Path, title: str, ylabel: str, values: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build station or the appliance
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    bars = ax.bar(list(values), list(values.values()), color=["#777777", "#2f6fb0", "#999999", "#4f8fd0"][: len(values)])
    ax.bar_label(bars, fmt="%.3f")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _kl_plot(path: Path, kls: list[np.ndarray], tau: Optional[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for kl in kls:
        left.plot(kl, alpha=0.5, linewidth=1)
    pooled = np.concatenate(kls) if kls else np.zeros(1)
    right.hist(pooled, bins=40, color="#2f6fb0")
    for ax in (left, right):
        if tau is not None:
            (ax.axhline if ax is left else ax.axvline)(tau, color="red", linestyle="--", label=f"tau = {tau}")
    left.set(title="KL(overlay || base) along each reply", xlabel="reply position", ylabel="nats")
    right.set(title="all positions", xlabel="nats", ylabel="count")
    if tau is not None:
        left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(
    model: VerifiedModel,
    overlay: Overlay,
    prompts: list[str],
    out: Path,
    heldout: Optional[list[Example]] = None,
    max_tokens: int = 96,
    base=None,
    sample_seeds: int = 2,
) -> dict:
    """Measure overlay on vs off on `prompts` (and held-out NLL on `heldout`); write report.md, report.json, PNGs.

    Replies are greedy (no repetition penalty: the stress test for loops); the loop rate is also
    measured on the replies a user gets, the chat's default sampler, with `sample_seeds` seeds.
    """
    out.mkdir(parents=True, exist_ok=True)
    base = base if base is not None else load_base(model)
    runtime = Runtime(model, n_ctx=2048)
    try:
        on, off = replies(runtime, prompts, overlay, max_tokens), replies(runtime, prompts, None, max_tokens)
        kls, hidden_on = trajectory_measures(base, overlay, on, on=True)
        _, hidden_off = trajectory_measures(base, overlay, off, on=False)
        loops = {"greedy": compare_loops(off, on)}
        if sample_seeds:
            sampled = [SamplingSettings(seed=k) for k in range(sample_seeds)]
            loops["sampled"] = compare_loops(
                [t for s in sampled for t in replies(runtime, prompts, None, max_tokens, s)],
                [t for s in sampled for t in replies(runtime, prompts, overlay, max_tokens, s)],
            )
        nll: dict[str, float] = {}
        if heldout:
            adapter = TakensAdapter(base, TakensLoRA.from_params(overlay.params))
            nll = {
                "torch off": mean_nll(adapter, heldout, on=False),
                "torch on": mean_nll(adapter, heldout),
                "llama.cpp off": nll_llama(runtime, None, heldout),
                "llama.cpp on": nll_llama(runtime, overlay, heldout),
            }
        samples = [(p, a.text, b.text) for p, a, b in zip(prompts, off, on)]
    finally:
        runtime.close()

    tau = overlay.training.get("config", {}).get("tau")
    metrics = {
        "prompts": len(prompts),
        "kl": kl_stats(kls),
        "tau": tau,
        "loop_rate": loops,
        "participation_ratio": {"off": participation_ratio(hidden_off), "on": participation_ratio(hidden_on)},
        "heldout_nll": nll,
    }
    if nll:
        torch_gain, llama_gain = nll["torch off"] - nll["torch on"], nll["llama.cpp off"] - nll["llama.cpp on"]
        metrics["heldout_gain"] = {
            "torch": torch_gain,
            "llama.cpp": llama_gain,
            "transfer": llama_gain / torch_gain if torch_gain else None,
        }

    _kl_plot(out / "kl.png", kls, tau)
    _bars(out / "loop_rate.png", "repeated 4-gram rate (lower is better)", "share of tokens",
          {f"{how} {side}": loops[how][side] for how in loops for side in ("off", "on")})  # fmt: skip
    _bars(out / "participation.png", "participation ratio of final hidden states", "dimensions", metrics["participation_ratio"])
    if nll:
        _bars(out / "nll.png", "held-out NLL on the overlay's domain (lower is better)", "nats / token", nll)
    (out / "report.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(_page(overlay, metrics, samples))
    return metrics


def _page(overlay: Overlay, m: dict, samples: list[tuple[str, str, str]]) -> str:
    kl, loops, pr = m["kl"], m["loop_rate"], m["participation_ratio"]
    verdict_kl = "" if m["tau"] is None else (" (under tau)" if kl["rmse"] <= m["tau"] else " (ABOVE tau)")
    loop_rows = {"greedy": "repeated 4-gram rate, greedy", "sampled": "repeated 4-gram rate, the chat's sampler"}
    lines = [
        "# Overlay report",
        "",
        f"Overlay: rank {overlay.params.rank}, delays {list(overlay.params.delays)}, alpha {overlay.params.alpha}, "
        f"{overlay.params.activation}; trained for base `{overlay.base_model_sha256[:16]}…`. Prompts: {m['prompts']}.",
        "",
        "| measure | overlay off | overlay on |",
        "|---|---|---|",
        *(f"| {loop_rows[how]} | {x['off']:.3f} | {x['on']:.3f} |" for how, x in loops.items()),
        f"| participation ratio, final hidden states | {pr['off']:.1f} | {pr['on']:.1f} |",
    ]
    if m["heldout_nll"]:
        n = m["heldout_nll"]
        lines += [
            f"| held-out NLL, torch float32 | {n['torch off']:.3f} | {n['torch on']:.3f} |",
            f"| held-out NLL, llama.cpp quantised | {n['llama.cpp off']:.3f} | {n['llama.cpp on']:.3f} |",
        ]
    lines += [
        "",
        f"KL(overlay || base) along the overlay's replies, nats per position: mean {kl['mean']:.3f}, "
        f"rmse {kl['rmse']:.3f}{verdict_kl}, p95 {kl['p95']:.3f}, max {kl['max']:.3f}.",
        "",
        "Loops, per reply with the overlay on against the same prompt off: "
        + "; ".join(
            f"{how}: {x['more']} loop more, {x['less']} less, {x['same']} the same "
            f"({'not above' if x['on'] <= x['off'] else 'ABOVE'} the base on average)"
            for how, x in loops.items()
        )
        + ".",
    ]
    gain = m.get("heldout_gain")
    if gain and gain["transfer"] is not None:
        lines += [
            "",
            f"Held-out gain: {gain['torch']:.3f} nats/token in torch, {gain['llama.cpp']:.3f} in llama.cpp "
            f"(transfer {gain['transfer']:.0%}).",
        ]
    lines += [
        "",
        "![KL](kl.png) ![loops](loop_rate.png)",
        "",
        "![PR](participation.png)" + (" ![NLL](nll.png)" if m["heldout_nll"] else ""),
        "",
        "## Samples (greedy)",
        "",
    ]
    for prompt, off, on in samples[:5]:
        lines += [f"**{prompt}**", "", f"- off: {off.strip()[:300]}", f"- on: {on.strip()[:300]}", ""]
    return "\n".join(lines) + "\n"
