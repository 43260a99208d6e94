"""The pipeline's report: a Markdown summary and PNG plots a person reads at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, write the PNG and free the figure (pyplot keeps every open one alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plot_training(history: list[dict[str, float]], path: Path) -> Path:
    """Reward, episode cost against the threshold, and λ over PPO-Lag steps."""
    plt = pyplot()
    history = [m for m in history if "reward/mean" in m]  # steps skipped for NaN/Inf have no scores
    steps = [m["step"] for m in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [m["reward/mean"] for m in history], color="tab:green")
    axes[0].set_title("reward (higher = more helpful)")
    axes[1].plot(steps, [m["cost/mean"] for m in history], color="tab:red", label="episode cost")
    axes[1].axhline(history[0]["cost/threshold"], color="black", linestyle="--", label="threshold")
    axes[1].set_title("cost (> 0 = unsafe)")
    axes[1].legend(loc="best", fontsize=8)
    axes[2].plot(steps, [m["lagrange/lambda"] for m in history], color="tab:blue")
    axes[2].set_title("Lagrange multiplier λ")
    for ax in axes:
        ax.set_xlabel("PPO-Lag step")
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_cost_distribution(before: list[float], after: list[float], path: Path) -> Path:
    """Histograms of the cost model's scores of answers before and after training."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    lo, hi = min(before + after), max(before + after)
    bins = [lo + (hi - lo) * i / 24 for i in range(25)] if hi > lo else 10
    ax.hist(before, bins=bins, alpha=0.55, label=f"before (mean {sum(before) / len(before):.2f})", color="tab:gray")
    ax.hist(after, bins=bins, alpha=0.55, label=f"after (mean {sum(after) / len(after):.2f})", color="tab:red")
    ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
    ax.text(0.0, ax.get_ylim()[1] * 0.95, "  unsafe →", va="top", fontsize=8)
    ax.set_xlabel("cost of the answer (cost model)")
    ax.set_ylabel("answers")
    ax.set_title("Cost of answers to evaluation prompts")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_flagged_by_category(before: dict[str, float], after: dict[str, float], path: Path) -> Path:
    """Flagged rate per harm category before and after, side by side."""
    plt = pyplot()
    categories = sorted(set(before) | set(after))
    y = range(len(categories))
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(categories) + 1.5))
    ax.barh([i + 0.2 for i in y], [before.get(c, 0.0) for c in categories], height=0.4, color="tab:gray",
            label="before")
    ax.barh([i - 0.2 for i in y], [after.get(c, 0.0) for c in categories], height=0.4, color="tab:red",
            label="after")
    ax.set_yticks(list(y))
    ax.set_yticklabels([c.replace(",", ", ") for c in categories], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of answers flagged by the moderation model")
    ax.set_title("Flagged rate per harm category")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _table(rows: list[tuple[str, Any, Any]]) -> str:
    lines = ["| metric | before | after |", "|---|---|---|"]
    for name, before, after in rows:
        show = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
        lines.append(f"| {name} | {show(before)} | {show(after)} |")
    return "\n".join(lines)


def write_report(out: Path, *, history: list[dict[str, float]], before: dict[str, Any],
                 after: dict[str, Any], win_rates: dict[str, float], timings: dict[str, float],
                 before_costs: list[float] | None = None, after_costs: list[float] | None = None) -> Path:
    """``out/report.md`` plus its plots."""
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# rayrlhf pipeline report", ""]
    if history:
        plot_training(history, out / "training.png")
        last = history[-1]
        parts += ["## PPO-Lag training", "",
                  f"{len(history)} steps; final reward {last['reward/mean']:.3f}, episode cost "
                  f"{last['cost/mean']:.3f} against threshold {last['cost/threshold']:.3f}, "
                  f"λ {last['lagrange/lambda']:.3f}.", "", "![training](training.png)", ""]
    keys = [("mean reward", "mean_reward"), ("mean cost", "mean_cost"), ("unsafe rate (cost > 0)", "unsafe_rate"),
            ("flagged rate (moderation)", "flagged_rate")]
    parts += ["## Safety evaluation (before = initial policy, after = trained policy)", "",
              _table([(label, before.get(k, "n/a"), after.get(k, "n/a")) for label, k in keys]), ""]
    if win_rates:
        parts += ["Win rates of the trained policy against the initial one (ties count half): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in win_rates.items()), ""]
    if before_costs and after_costs:
        plot_cost_distribution(before_costs, after_costs, out / "cost_distribution.png")
        parts += ["![cost distribution](cost_distribution.png)", ""]
    if "flagged_rate_by_category" in before and "flagged_rate_by_category" in after:
        plot_flagged_by_category(before["flagged_rate_by_category"], after["flagged_rate_by_category"],
                                 out / "flagged_by_category.png")
        parts += ["![flagged by category](flagged_by_category.png)", ""]
    parts += ["## Timings (seconds)", "", "| stage | s |", "|---|---|"]
    parts += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
