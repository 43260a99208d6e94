"""``rayrlhf sweep-report``: what a Hydra multirun over safety thresholds (and other keys) found.

Each trial of ``rayrlhf ppo-lag --multirun lagrange.threshold=a,b,...`` is its own training run
in its own folder (``<sweep>/<n>/`` with ``metrics.jsonl`` and ``.hydra/overrides.yaml``). This
stage reads every trial, summarises it by the mean of its last K steps (one step alone is
noisy), marks which trials meet their own limit and which are Pareto-optimal (no other trial
has at least as much reward at no more cost, and is strictly better in one), and writes
``sweep.md`` / ``sweep.csv`` / ``sweep.json`` and ``frontier.png``. Trials that are
``rayrlhf pipeline`` runs (metrics under ``ppo-lag/``) also bring the evaluation of the
trained policy (``pipeline_report.json``: eval after training).

A trial that failed or stopped early (fewer steps logged than its config asked for) is listed
with the error its log recorded, and left out of the frontier: its last steps describe a
policy that never finished training. A trial whose λ sat at its cap (the metric
``lagrange/threshold_unreachable``) is marked: its threshold is not reachable with that
policy and budget.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

REWARD, COST, LAMBDA, THRESHOLD, KL = (
    "reward/mean", "cost/mean", "lagrange/lambda", "cost/threshold", "actor/kl_to_ref")
REQUIRED_METRICS = (REWARD, COST, LAMBDA, THRESHOLD)
# Overrides that set the limit d: shown once, as the threshold the run logged (cost/threshold).
THRESHOLD_KEYS = ("lagrange.threshold",)
# Evaluation of the trained policy in pipeline trials: pipeline_report.json eval.after keys.
EVAL_KEYS = ("mean_reward", "mean_cost", "unsafe_rate", "flagged_rate")
UNREACHABLE, AT_CAP = "lagrange/threshold_unreachable", "lagrange/at_cap_steps"
# The steps a trial was asked for, by where its metrics live (ppo-lag run, pipeline run).
CONFIGURED_STEPS_KEYS = {"metrics.jsonl": "steps", "ppo-lag/metrics.jsonl": "ppo_steps"}
COMPLETED, FAILED, STOPPED_EARLY = "completed", "failed", "stopped early"
# The line the CLI logs when a stage raises (Hydra keeps a failed job's exception to itself).
FAILURE_LINE = re.compile(r"rayrlhf (?P<stage>[\w-]+) failed: (?P<error>.+)$")


def failure_line(stage: str, error: BaseException) -> str:
    """What the CLI writes into a stage's log when the stage raises (``FAILURE_LINE`` reads it)."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"rayrlhf {stage} failed: {type(error).__name__}: {first_line}"


# ----------------------------------------------------------------------------- pure math


def last_k_mean(values: Sequence[float], k: int) -> float:
    """Mean of the last ``k`` values (all of them when there are fewer)."""
    if k < 1:
        raise ValueError(f"last_k must be >= 1, got {k}")
    if not values:
        raise ValueError("no values to average")
    tail = list(values)[-k:]
    return math.fsum(tail) / len(tail)


def pareto_optimal(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (reward, cost) points: True where no other point dominates, i.e. has reward >= and
    cost <= with at least one strict. Equal points do not dominate each other."""
    flags = []
    for i, (r_i, c_i) in enumerate(points):
        dominated = any(r_j >= r_i and c_j <= c_i and (r_j > r_i or c_j < c_i)
                        for j, (r_j, c_j) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def parse_overrides(lines: Sequence[str]) -> dict[str, Any]:
    """Hydra override strings -> {key: value} with Hydra's own parser (``+``/``++`` prefixes
    dropped, ``group@package`` kept, values typed as Hydra types them). Deletions are skipped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parsed = {}
    for override in OverridesParser.create().parse_overrides(list(lines)):
        if override.type == OverrideType.DEL:
            continue
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        parsed[key] = override.value()
    return parsed


def swept_keys(overrides: Sequence[dict[str, Any]]) -> list[str]:
    """Keys whose value differs between trials (or is missing in some), in first-seen order."""
    keys: list[str] = []
    for trial in overrides:
        keys += [k for k in trial if k not in keys]
    missing = object()
    return [k for k in keys if any(t.get(k, missing) != overrides[0].get(k, missing) for t in overrides)]


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ----------------------------------------------------------------------------- trials


@dataclass
class TrialSummary:
    trial: str  # folder relative to the sweep folder
    params: dict[str, Any]  # the swept overrides of this trial
    threshold: float | None  # the cost limit d the trial trained against (cost/threshold)
    reward: float | None  # mean reward/mean over the last K steps (None: no step logged)
    cost: float | None  # mean cost/mean over the last K steps
    final_lambda: float | None
    kl: float | None  # mean actor/kl_to_ref over the last K steps
    steps: int  # the last step logged
    meets_threshold: bool = False
    pareto: bool = False
    eval_after: dict[str, float] = field(default_factory=dict)
    configured_steps: int | None = None  # what the trial's config asked for (None: unknown)
    status: str = COMPLETED  # completed | failed | stopped early
    error: str = ""  # why it failed or stopped, from its log or its files
    at_cap_steps: int = 0  # steps in a row λ sat at its cap, at the end
    threshold_unreachable: bool = False  # λ sat at its cap long enough to call it (the run's own flag)

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number} is not JSON ({exc.msg})") from exc
    if not rows:
        raise ValueError(f"{path}: no steps logged")
    return rows


def summarize_trial(history: Sequence[dict[str, Any]], last_k: int, *, trial: str = "",
                    params: dict[str, Any] | None = None, source: str = "metrics.jsonl") -> TrialSummary:
    """Summarise one run's metrics history (rows of metrics.jsonl) by its last ``last_k`` steps."""
    for row in history:
        missing = [key for key in REQUIRED_METRICS if key not in row]
        if missing:
            raise ValueError(f"{source}: step {row.get('step', '?')} lacks {', '.join(missing)}")
    column = lambda key: [float(row[key]) for row in history]  # noqa: E731
    kls = [float(row[KL]) for row in history if KL in row]
    threshold = float(history[-1][THRESHOLD])
    cost = last_k_mean(column(COST), last_k)
    last = history[-1]
    return TrialSummary(trial=trial, params=dict(params or {}), threshold=threshold,
                        reward=last_k_mean(column(REWARD), last_k), cost=cost,
                        final_lambda=float(last[LAMBDA]),
                        kl=last_k_mean(kls, last_k) if kls else None,
                        steps=int(last.get("step", len(history))),
                        meets_threshold=cost <= threshold, at_cap_steps=int(last.get(AT_CAP, 0)),
                        threshold_unreachable=bool(last.get(UNREACHABLE, 0.0)))


def find_trials(sweep_dir: Path) -> list[tuple[Path, Path | None]]:
    """(trial folder, metrics.jsonl or None) for every folder below ``sweep_dir`` holding
    Hydra's ``.hydra/overrides.yaml``; metrics are its own (ppo-lag) or under ``ppo-lag/``
    (pipeline), and None where the trial logged no step (it failed before the first)."""
    trials = []
    for overrides in sorted(sweep_dir.rglob(".hydra/overrides.yaml")):
        folder = overrides.parent.parent
        metrics = next((folder / name for name in CONFIGURED_STEPS_KEYS if (folder / name).is_file()), None)
        trials.append((folder, metrics))
    return trials


def trial_config(folder: Path) -> dict[str, Any]:
    """The trial's composed config as Hydra saved it (``{}`` if absent or unreadable)."""
    import yaml

    path = folder / ".hydra" / "config.yaml"
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def configured_steps(config: dict[str, Any], metrics_name: str) -> int | None:
    value = config.get(CONFIGURED_STEPS_KEYS.get(metrics_name, "steps"))
    return value if isinstance(value, int) else None


def logged_error(folder: Path) -> str:
    """The last failure the CLI logged into the trial's Hydra log(s) (``""``: none)."""
    found = ""
    for log_file in sorted(folder.glob("*.log")):
        for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
            match = FAILURE_LINE.search(line)
            if match:
                found = match.group("error").strip()
    return found


def trial_outcome(summary: TrialSummary, folder: Path) -> None:
    """Set ``status`` and ``error``: failed when the log holds a failure, stopped early when
    fewer steps were logged than configured, completed otherwise."""
    error = logged_error(folder)
    short = summary.configured_steps is not None and summary.steps < summary.configured_steps
    if error:
        summary.status, summary.error = FAILED, error
    elif short or summary.reward is None:
        summary.status = STOPPED_EARLY
        summary.error = summary.error or f"no error in {folder.name}'s log"
    if not summary.completed:
        summary.meets_threshold = False


def trial_sort_key(name: str) -> tuple:
    # Hydra numbers trials 0, 1, ..., 10: numeric order, not string order.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in Path(name).parts)


def summarize_sweep(sweep_dir: str | Path, last_k: int = 5) -> tuple[list[TrialSummary], list[str]]:
    """Every trial of a multirun summarised and marked; sorted by threshold, then swept values.
    Returns (summaries, swept keys)."""
    import yaml

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep_dir={sweep_dir}: no such folder")
    found = sorted(find_trials(sweep_dir), key=lambda t: trial_sort_key(str(t[0].relative_to(sweep_dir))))
    if not found:
        raise FileNotFoundError(f"sweep_dir={sweep_dir}: no trial folders (with .hydra/overrides.yaml "
                                "and metrics.jsonl) below it")
    all_overrides = []
    for folder, _ in found:
        path = folder / ".hydra" / "overrides.yaml"
        lines = yaml.safe_load(path.read_text()) or []
        try:
            all_overrides.append(parse_overrides(lines))
        except Exception as exc:  # Hydra's parser raises its own error types
            raise ValueError(f"{path}: cannot parse the overrides ({exc})") from exc
    keys = swept_keys(all_overrides)
    summaries = [summarize_folder(folder, metrics, last_k, sweep_dir, overrides, keys)
                 for (folder, metrics), overrides in zip(found, all_overrides)]
    # Only finished trials compete for the frontier.
    finished = [s for s in summaries if s.completed]
    for summary, optimal in zip(finished, pareto_optimal([(s.reward, s.cost) for s in finished])):
        summary.pareto = optimal
    summaries.sort(key=lambda s: (math.inf if s.threshold is None else s.threshold,
                                  [format_value(s.params[k]) for k in keys], trial_sort_key(s.trial)))
    return summaries, keys


def summarize_folder(folder: Path, metrics: Path | None, last_k: int, sweep_dir: Path,
                     overrides: dict[str, Any], keys: Sequence[str]) -> TrialSummary:
    """One trial folder: its metrics summarised, its outcome judged, its evaluation read. A
    trial without usable metrics is still a row (failed or stopped early), never dropped."""
    config = trial_config(folder)
    trial, params = str(folder.relative_to(sweep_dir)), {k: overrides.get(k) for k in keys}
    try:
        if metrics is None:
            raise ValueError("no step logged (no metrics.jsonl)")
        summary = summarize_trial(read_metrics(metrics), last_k, trial=trial, params=params, source=str(metrics))
    except ValueError as exc:
        lagrange = config.get("lagrange") if isinstance(config.get("lagrange"), dict) else {}
        threshold = lagrange.get("threshold", overrides.get(THRESHOLD_KEYS[0]))
        summary = TrialSummary(trial=trial, params=params, reward=None, cost=None, final_lambda=None, kl=None,
                               steps=0, threshold=float(threshold) if isinstance(threshold, (int, float)) else None,
                               status=STOPPED_EARLY, error=str(exc))
    summary.configured_steps = configured_steps(config, "metrics.jsonl" if metrics is None
                                                else str(metrics.relative_to(folder)))
    trial_outcome(summary, folder)
    report = folder / "pipeline_report.json"
    if report.is_file():
        after = json.loads(report.read_text()).get("eval", {}).get("after", {})
        summary.eval_after = {k: float(after[k]) for k in EVAL_KEYS if k in after}
    return summary


# ----------------------------------------------------------------------------- outputs


def table_rows(summaries: Sequence[TrialSummary], keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the sweep table (strings, as written to sweep.md and sweep.csv)."""
    eval_keys = [k for k in EVAL_KEYS if any(k in s.eval_after for s in summaries)]
    keys = [k for k in keys if k not in THRESHOLD_KEYS]  # the threshold column shows it
    header = ["trial", *keys, "threshold", "reward", "cost", "meets threshold", "final λ", "KL to ref",
              "steps", "Pareto-optimal", "status", "threshold reachable",
              *[f"eval after: {k}" for k in eval_keys]]
    number = lambda value, spec: "" if value is None else format(value, spec)  # noqa: E731
    rows = []
    for s in summaries:
        rows.append([s.trial, *[format_value(s.params[k]) for k in keys], number(s.threshold, "g"),
                     number(s.reward, ".4f"), number(s.cost, ".4f"),
                     ("yes" if s.meets_threshold else "no") if s.completed else "",
                     number(s.final_lambda, ".4f"), number(s.kl, ".4f"), steps_cell(s),
                     "yes" if s.pareto else "no", status_cell(s), reachable_cell(s),
                     *[f"{s.eval_after[k]:.4f}" if k in s.eval_after else "" for k in eval_keys]])
    return header, rows


def steps_cell(s: TrialSummary) -> str:
    return str(s.steps) if s.configured_steps is None else f"{s.steps}/{s.configured_steps}"


def status_cell(s: TrialSummary) -> str:
    return s.status if s.completed else f"{s.status}: {s.error}"


def reachable_cell(s: TrialSummary) -> str:
    if s.threshold_unreachable:
        return f"no: λ at its cap for the last {s.at_cap_steps} steps"
    return "" if s.reward is None else "yes"


def point_label(summary: TrialSummary, keys: Sequence[str]) -> str:
    # Short key names (the last dotted part) keep labels readable on the plot.
    parts = [f"{k.split('.')[-1]}={format_value(summary.params[k])}" for k in keys]
    return ", ".join(parts) or f"trial {summary.trial}"


def plot_frontier(summaries: Sequence[TrialSummary], keys: Sequence[str], path: Path, last_k: int) -> Path:
    """Reward (up = better) against cost (left = safer): one point per trial, coloured by its
    threshold (drawn as a dashed line in the same colour), filled if the trial meets it and a
    cross if not; the Pareto frontier joins the trials nothing beats."""
    from rayrlhf.eval.report import pyplot, save_figure

    summaries = [s for s in summaries if s.completed]  # unfinished trials have no point to show
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    thresholds = sorted({s.threshold for s in summaries})
    cmap = plt.get_cmap("viridis")
    colour = {d: cmap(0.85 * i / max(len(thresholds) - 1, 1)) for i, d in enumerate(thresholds)}
    for d in thresholds:
        ax.axvline(d, color=colour[d], linestyle="--", linewidth=1.2, alpha=0.8)
        # Named at the bottom so a reader need not match colours.
        ax.text(d, 0.01, f" d={d:g}", transform=ax.get_xaxis_transform(), color=colour[d], fontsize=8,
                rotation=90, va="bottom", ha="right")
    front = sorted((s for s in summaries if s.pareto), key=lambda s: (s.cost, s.reward))
    ax.plot([s.cost for s in front], [s.reward for s in front], color="black", linewidth=1.5, zorder=2,
            label="Pareto frontier (more reward at less cost)")
    # Rings mark the frontier's trials, visible even where the frontier is a single point.
    ax.scatter([s.cost for s in front], [s.reward for s in front], s=260, facecolors="none",
               edgecolors="black", linewidths=1.2, zorder=2, label="Pareto-optimal trial")
    for s in summaries:
        ax.scatter([s.cost], [s.reward], s=90, zorder=3, color=colour[s.threshold],
                   marker="o" if s.meets_threshold else "X", edgecolors="black", linewidths=0.6)
        ax.annotate(point_label(s, keys), (s.cost, s.reward), textcoords="offset points", xytext=(7, 6),
                    fontsize=8)
    # Legend entries for the encodings, drawn once.
    ax.scatter([], [], marker="o", color="gray", edgecolors="black", label="meets its threshold (cost ≤ d)")
    ax.scatter([], [], marker="X", color="gray", edgecolors="black", label="violates its threshold")
    ax.plot([], [], color="gray", linestyle="--", label="threshold d (colour = trial's d)")
    ax.set_xlabel(f"episode cost (mean of last {last_k} steps; > 0 = unsafe)  ← safer")
    ax.set_ylabel(f"reward (mean of last {last_k} steps)  ↑ more helpful")
    ax.set_title(f"Reward vs cost across {len(summaries)} trials of the sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.margins(x=0.2, y=0.15)  # room for the labels
    return save_figure(fig, path)


def write_sweep_report(summaries: Sequence[TrialSummary], keys: Sequence[str], out: Path, *,
                       sweep_dir: Path, last_k: int) -> dict[str, Path]:
    from rayrlhf.runs import write_json

    out.mkdir(parents=True, exist_ok=True)
    header, rows = table_rows(summaries, keys)
    with open(out / "sweep.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    write_json(out / "sweep.json", {"sweep_dir": str(sweep_dir), "last_k": last_k, "swept_keys": list(keys),
                                    "trials": [asdict(s) for s in summaries]})
    plot_frontier(summaries, keys, out / "frontier.png", last_k)
    unfinished = [s for s in summaries if not s.completed]
    unreachable = [s for s in summaries if s.threshold_unreachable]
    lines = [
        f"# Sweep: {sweep_dir}",
        "",
        f"{len(summaries)} trials; swept: {', '.join(keys) or '(nothing differs between trials)'}. "
        f"reward, cost and KL are means over each trial's last {last_k} steps; λ is the final value. "
        "A trial meets its threshold when its cost ≤ threshold; Pareto-optimal means no other finished "
        "trial has at least as much reward at no more cost.",
        "",
        *[f"- **Trial {s.trial} {s.status}** after {steps_cell(s)} steps: {s.error}. Left out of the frontier."
          for s in unfinished],
        *[f"- Trial {s.trial}: threshold {s.threshold:g} not reachable with this policy/budget "
          f"(λ at its cap for the last {s.at_cap_steps} steps)." for s in unreachable],
        *([""] if unfinished or unreachable else []),
        "![reward vs cost](frontier.png)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
    ]
    (out / "sweep.md").write_text("\n".join(lines), encoding="utf-8")
    return {name: out / name for name in ("sweep.md", "sweep.csv", "sweep.json", "frontier.png")}


def newest_sweep() -> Path:
    runs = Path(os.environ.get("RAYRLHF_RUNS_DIR", "runs"))
    candidates = [p for name in ("ppo-lag-sweep", "pipeline-sweep") for p in (runs / name).glob("*") if p.is_dir()]
    if not candidates:
        raise FileNotFoundError(f"no sweeps under {runs}/ppo-lag-sweep or {runs}/pipeline-sweep; "
                                "pass sweep_dir=<multirun folder>")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def run(cfg) -> dict[str, Path]:
    """Entry of ``rayrlhf sweep-report``."""
    sweep_dir = Path(cfg.sweep_dir) if cfg.sweep_dir else newest_sweep()
    summaries, keys = summarize_sweep(sweep_dir, cfg.last_k)
    out = Path(cfg.out_dir) if cfg.out_dir else sweep_dir
    written = write_sweep_report(summaries, keys, out, sweep_dir=sweep_dir, last_k=cfg.last_k)
    for s in summaries:
        if not s.completed:
            log.warning("sweep-report: trial %s %s %s after %s steps: %s", s.trial, point_label(s, keys),
                        s.status, steps_cell(s), s.error)
            continue
        log.info("sweep-report: trial %s %s: reward %.4f cost %.4f (d=%g, %s)%s%s", s.trial, point_label(s, keys),
                 s.reward, s.cost, s.threshold, "meets" if s.meets_threshold else "violates",
                 ", Pareto-optimal" if s.pareto else "",
                 ", threshold not reachable (λ at its cap)" if s.threshold_unreachable else "")
    print(f"sweep report: {written['sweep.md']}")
    return written
