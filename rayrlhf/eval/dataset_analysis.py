"""``rayrlhf analyze``: what a preference or QA dataset holds, measured the way Safe RLHF and
BeaverTails describe their data.

Safe RLHF trains two judges because helpfulness and harmlessness are labelled apart: the more
helpful answer of a pair is often not the safer one. This module measures that on any dataset,
and the rest a person checks before training on it:

- decoupling (preference rows): how often ``better_response_id == safer_response_id``, overall
  and by the pair's safety pattern (both safe, one safe, both unsafe); in one-safe pairs, how
  often the helpful pick is the safe answer;
- safe/unsafe balance per harm category: each answer counts under every category of its
  prompt. A prompt's categories are, first found: the record's own ``category`` field (a name
  or a dict of flags), its per-response ``response_<i>_harm_category`` flags (PKU-SafeRLHF
  v1), the ``prompt_categories`` set joined by prompt text, or (QA rows) the union of the flags
  of every answer to that prompt;
- category co-occurrence: answers flagging both categories (the diagonal: each alone);
- severity, where the records carry ``response_<i>_severity_level`` or ``severity_level``;
- prompt and response lengths (characters and words);
- given reward and cost models: their scores on every answer, Pearson and Spearman
  correlation, and the reward-versus-cost scatter coloured by the safety label.

Everything is computed by pure functions on typed rows plus the raw records' extra fields;
``run`` writes ``analysis.md``, ``analysis.json`` and the PNGs.
"""

from __future__ import annotations

import collections
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from rayrlhf.data import HARM_CATEGORIES, PreferenceRow, QAClassificationRow, load_dataset_from_config
from rayrlhf.data.loaders import iter_raw_records

log = logging.getLogger(__name__)

SEVERITY_FIELDS = ("severity_level", "severity")


@dataclass
class Answer:
    """One (prompt, response) of the dataset with what is known about it."""

    prompt: str
    response: str
    safe: bool | None
    flags: frozenset[str] = frozenset()  # harm categories flagged on this answer
    severity: int | None = None
    prompt_categories: frozenset[str] = frozenset()


@dataclass
class Dataset:
    """The answers of a dataset, and its pairs when it is a preference set."""

    source: str
    schema: str
    answers: list[Answer]
    pairs: list[PreferenceRow] = field(default_factory=list)
    category_origin: str = "none"


# ------------------------------------------------------------------ reading extra fields
def _flag_names(value: Any) -> frozenset[str] | None:
    """Category names from a dict of flags or a single name; None when neither."""
    if isinstance(value, Mapping):
        return frozenset(str(k) for k, on in value.items() if on is True)
    if isinstance(value, str) and value.strip():
        return frozenset([value])
    return None


def _severity(record: Mapping[str, Any], index: int | None) -> int | None:
    names = ([f"response_{index}_{f}" for f in SEVERITY_FIELDS] if index is not None else []) + list(SEVERITY_FIELDS)
    for name in names:
        value = record.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def raw_records_at(ds_cfg, row_numbers: list[int]) -> list[Mapping[str, Any]]:
    """The raw records (with the fields the schema ignores) of the kept rows, in their order."""
    wanted = set(row_numbers)
    found: dict[int, Mapping[str, Any]] = {}
    for index, record in enumerate(iter_raw_records(ds_cfg.source, split=ds_cfg.split, revision=ds_cfg.revision)):
        if index in wanted:
            found[index] = record if isinstance(record, Mapping) else {}
            if len(found) == len(wanted):
                break
    return [found.get(i, {}) for i in row_numbers]


def build_dataset(rows: list, records: list[Mapping[str, Any]], source: str,
                  prompt_categories: Mapping[str, frozenset[str]] | None = None) -> Dataset:
    """Answers of typed ``rows`` with their raw ``records``' extra fields (same order)."""
    if not rows:
        raise ValueError(f"{source}: no rows to analyse")
    joined = prompt_categories or {}
    origins: collections.Counter = collections.Counter()

    def categories_of(prompt: str, record: Mapping[str, Any], per_response: Iterable[frozenset[str]]) -> frozenset[str]:
        own = _flag_names(record.get("category"))
        if own:
            origins["record 'category' field"] += 1
            return own
        union = frozenset().union(*per_response)
        if union:
            origins["per-response harm flags"] += 1
            return union
        if prompt in joined:
            origins["prompt_categories join"] += 1
            return joined[prompt]
        return frozenset()

    answers: list[Answer] = []
    if isinstance(rows[0], PreferenceRow):
        for row, record in zip(rows, records):
            flags = [_flag_names(record.get(f"response_{i}_harm_category")) or frozenset() for i in (0, 1)]
            cats = categories_of(row.prompt, record, flags)
            answers += [Answer(row.prompt, row.response(i), row.is_safe(i), flags[i], _severity(record, i), cats)
                        for i in (0, 1)]
        dataset = Dataset(source, "preference", answers, pairs=list(rows))
    elif isinstance(rows[0], QAClassificationRow):
        by_prompt: dict[str, set[str]] = collections.defaultdict(set)
        for row in rows:
            by_prompt[row.prompt] |= {name for name, on in row.category.items() if on}
        for row, record in zip(rows, records):
            flags = frozenset(name for name, on in row.category.items() if on)
            cats = _flag_names(record.get("prompt_category")) or frozenset(by_prompt[row.prompt]) or joined.get(row.prompt, frozenset())
            origins["flags of the prompt's answers" if by_prompt[row.prompt] else "none"] += 1
            answers.append(Answer(row.prompt, row.response, row.is_safe, flags, _severity(record, None), cats))
        dataset = Dataset(source, "qa_classification", answers)
    else:
        raise ValueError(f"{source}: analyse preference or qa_classification rows, not {type(rows[0]).__name__}")
    origins.pop("none", None)
    dataset.category_origin = ", ".join(f"{k} ({v} rows)" for k, v in origins.most_common()) or "none"
    return dataset


# ------------------------------------------------------------------ the measures
def decoupling(pairs: list[PreferenceRow]) -> dict[str, Any]:
    """How often the more helpful answer is also the safer one, by safety pattern."""
    patterns = {"both_safe": (True, True), "one_safe": None, "both_unsafe": (False, False)}
    out: dict[str, Any] = {"pairs": len(pairs), "better_is_safer": sum(p.better_response_id == p.safer_response_id
                                                                        for p in pairs)}
    out["better_is_safer_share"] = out["better_is_safer"] / len(pairs) if pairs else None
    for name, both in patterns.items():
        group = [p for p in pairs if (p.is_response_0_safe, p.is_response_1_safe) == both] if both else \
            [p for p in pairs if p.is_response_0_safe != p.is_response_1_safe]
        agree = sum(p.better_response_id == p.safer_response_id for p in group)
        out[name] = {"pairs": len(group), "better_is_safer": agree,
                     "better_is_safer_share": agree / len(group) if group else None}
    one_safe = [p for p in pairs if p.is_response_0_safe != p.is_response_1_safe]
    out["one_safe"]["better_is_the_safe_answer"] = sum(p.is_safe(p.better_response_id) for p in one_safe)
    # The safer pick should be the safe answer whenever exactly one is safe; a label conflict otherwise.
    out["one_safe"]["safer_label_conflicts"] = sum(not p.is_safe(p.safer_response_id) for p in one_safe)
    return out


def category_balance(answers: list[Answer]) -> dict[str, dict[str, int]]:
    """Per category of the prompt: safe and unsafe answers (an answer counts under each)."""
    order = _category_order({c for a in answers for c in a.prompt_categories})
    counts = {c: {"safe": 0, "unsafe": 0} for c in order}
    for answer in answers:
        if answer.safe is None:
            continue
        for c in answer.prompt_categories:
            counts[c]["safe" if answer.safe else "unsafe"] += 1
    return counts


def _category_order(names: set[str]) -> list[str]:
    """The 14 BeaverTails categories in their id order first, then any others by name."""
    return [c for c in HARM_CATEGORIES if c in names] + sorted(names - set(HARM_CATEGORIES))


def co_occurrence(answers: list[Answer]) -> dict[str, Any]:
    """Answers flagging category i and j (i == j: flagging i), over the categories seen;
    the 14 BeaverTails categories are always rows when any of them is flagged."""
    seen = {c for a in answers for c in a.flags}
    names = list(HARM_CATEGORIES) if seen & set(HARM_CATEGORIES) else []
    names += sorted(seen - set(HARM_CATEGORIES))
    index = {c: i for i, c in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for answer in answers:
        ids = sorted(index[c] for c in answer.flags)
        for i in ids:
            for j in ids:
                matrix[i][j] += 1
    flagged = [a for a in answers if a.flags]
    return {"categories": names, "matrix": matrix, "flagged_answers": len(flagged),
            "multi_category_answers": sum(len(a.flags) > 1 for a in flagged)}


def severity_counts(answers: list[Answer]) -> dict[str, int]:
    counts = collections.Counter(a.severity for a in answers if a.severity is not None)
    return {str(level): counts[level] for level in sorted(counts)}


def length_summary(texts: list[str]) -> dict[str, float]:
    chars = sorted(len(t) for t in texts)
    words = [len(t.split()) for t in texts]
    return {"n": len(texts), "chars_mean": statistics.fmean(chars), "chars_median": statistics.median(chars),
            "chars_p90": chars[min(len(chars) - 1, math.ceil(0.9 * len(chars)) - 1)], "chars_max": chars[-1],
            "words_mean": statistics.fmean(words), "words_median": statistics.median(words)}


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank (Spearman's convention)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 2:
        return None
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def score_summary(reward: list[float], cost: list[float], safe: list[bool | None]) -> dict[str, Any]:
    """Correlation of the two judges over the answers, and how their scores split by label."""
    out: dict[str, Any] = {"answers": len(reward), "pearson": pearson(reward, cost),
                           "spearman": pearson(ranks(reward), ranks(cost))}
    for label, name in ((True, "safe"), (False, "unsafe")):
        picked = [i for i, s in enumerate(safe) if s is label]
        if picked:
            out[f"mean_reward_{name}"] = statistics.fmean(reward[i] for i in picked)
            out[f"mean_cost_{name}"] = statistics.fmean(cost[i] for i in picked)
            out[f"cost_positive_share_{name}"] = sum(cost[i] > 0 for i in picked) / len(picked)
    return out


def analyse(dataset: Dataset, scores: Mapping[str, list[float]] | None = None) -> dict[str, Any]:
    """Every measure that the dataset's fields allow (``scores``: reward and cost per answer)."""
    answers = dataset.answers
    labelled = [a for a in answers if a.safe is not None]
    report: dict[str, Any] = {
        "source": dataset.source, "schema": dataset.schema, "answers": len(answers),
        "prompts": len({a.prompt for a in answers}),
        "safe_answers": sum(a.safe is True for a in labelled), "unsafe_answers": sum(a.safe is False for a in labelled),
        "category_origin": dataset.category_origin,
        "category_balance": category_balance(answers),
        "co_occurrence": co_occurrence(answers),
        "severity": severity_counts(answers),
        "lengths": {"prompt": length_summary(sorted({a.prompt for a in answers})),
                    "response": length_summary([a.response for a in answers])},
    }
    if dataset.pairs:
        report["decoupling"] = decoupling(dataset.pairs)
    if scores:
        report["scores"] = score_summary(scores["reward"], scores["cost"], [a.safe for a in answers])
    return report


# ------------------------------------------------------------------ scoring with judges
def score_answers(answers: list[Answer], reward: str, cost: str, dtype: str = "float32") -> dict[str, list[float]]:
    """Reward and cost of every answer (each distinct (prompt, response) is scored once)."""
    from rayrlhf.rewards import make_scorer

    unique = list(dict.fromkeys((a.prompt, a.response) for a in answers))
    prompts, responses = [p for p, _ in unique], [r for _, r in unique]
    out: dict[str, list[float]] = {}
    for name, source in (("reward", reward), ("cost", cost)):
        values = make_scorer(source, dtype=dtype)(prompts, responses, [[] for _ in unique]).tolist()
        by_pair = dict(zip(unique, values))
        out[name] = [by_pair[(a.prompt, a.response)] for a in answers]
    return out


# ------------------------------------------------------------------ plots
def _short(name: str) -> str:
    return name.split(",")[0].replace("_", " ")


def plot_decoupling(decoupled: Mapping[str, Any], path: Path) -> Path:
    from rayrlhf.eval.report import pyplot, save_figure

    plt = pyplot()
    groups = ["both_safe", "one_safe", "both_unsafe"]
    agree = [decoupled[g]["better_is_safer"] for g in groups]
    differ = [decoupled[g]["pairs"] - decoupled[g]["better_is_safer"] for g in groups]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(groups, agree, color="tab:green", label="more helpful = safer")
    ax.bar(groups, differ, bottom=agree, color="tab:orange", label="more helpful ≠ safer")
    share = decoupled["better_is_safer_share"]
    ax.set_title(f"Helpful vs safe: same answer in {share:.0%} of {decoupled['pairs']} pairs")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_category_balance(balance: Mapping[str, Mapping[str, int]], path: Path) -> Path:
    from rayrlhf.eval.report import pyplot, save_figure

    plt = pyplot()
    names = list(balance)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    safe = [balance[c]["safe"] for c in names]
    unsafe = [balance[c]["unsafe"] for c in names]
    ax.barh([_short(c) for c in names], safe, color="tab:green", label="safe answers")
    ax.barh([_short(c) for c in names], unsafe, left=safe, color="tab:red", label="unsafe answers")
    ax.invert_yaxis()
    ax.set_xlabel("answers to prompts of the category")
    ax.set_title("Safe/unsafe balance per harm category")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_co_occurrence(co: Mapping[str, Any], path: Path) -> Path:
    from rayrlhf.eval.report import pyplot, save_figure

    plt = pyplot()
    names, matrix = co["categories"], co["matrix"]
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(names)), [_short(c) for c in names], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), [_short(c) for c in names], fontsize=7)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(image, ax=ax, label="answers flagging both")
    ax.set_title(f"Harm category co-occurrence ({co['flagged_answers']} flagged answers)")
    return save_figure(fig, path)


def plot_lengths(answers: list[Answer], path: Path) -> Path:
    from rayrlhf.eval.report import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].hist([len(p) for p in {a.prompt for a in answers}], bins=30, color="tab:blue")
    axes[0].set_title("prompt length")
    safe = [len(a.response) for a in answers if a.safe is not False]
    unsafe = [len(a.response) for a in answers if a.safe is False]
    axes[1].hist([safe, unsafe], bins=30, stacked=True, color=["tab:green", "tab:red"],
                 label=["safe (or unlabelled)", "unsafe"])
    axes[1].set_title("response length")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("characters")
        ax.set_ylabel("count")
    return save_figure(fig, path)


def plot_severity(counts: Mapping[str, int], path: Path) -> Path:
    from rayrlhf.eval.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(list(counts), list(counts.values()), color="tab:purple")
    ax.set_xlabel("severity level")
    ax.set_ylabel("answers")
    ax.set_title("Severity of the answers")
    return save_figure(fig, path)


def plot_reward_cost(answers: list[Answer], scores: Mapping[str, list[float]], summary: Mapping[str, Any],
                     path: Path) -> Path:
    from rayrlhf.eval.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for label, color, name in ((True, "tab:green", "safe"), (False, "tab:red", "unsafe"), (None, "tab:gray", "unlabelled")):
        picked = [i for i, a in enumerate(answers) if a.safe is label]
        if picked:
            ax.scatter([scores["reward"][i] for i in picked], [scores["cost"][i] for i in picked], s=10, alpha=0.6,
                       color=color, label=f"{name} ({len(picked)})")
    ax.axhline(0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("reward (higher = more helpful)")
    ax.set_ylabel("cost (> 0 = unsafe)")
    pearson_r = summary.get("pearson")
    ax.set_title("Reward vs cost" + (f" (Pearson r = {pearson_r:.2f})" if pearson_r is not None else ""))
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ------------------------------------------------------------------ report
def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_analysis(dataset: Dataset, report: dict[str, Any], out: Path,
                   scores: Mapping[str, list[float]] | None = None) -> dict[str, str]:
    """``analysis.md``, ``analysis.json`` and the PNGs the dataset's fields allow, in ``out``."""
    from rayrlhf.runs import write_json

    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    if "decoupling" in report:
        figures["decoupling"] = plot_decoupling(report["decoupling"], out / "decoupling.png").name
    if report["category_balance"]:
        figures["category_balance"] = plot_category_balance(report["category_balance"], out / "category_balance.png").name
    if report["co_occurrence"]["categories"]:
        figures["co_occurrence"] = plot_co_occurrence(report["co_occurrence"], out / "category_cooccurrence.png").name
    if report["severity"]:
        figures["severity"] = plot_severity(report["severity"], out / "severity.png").name
    figures["lengths"] = plot_lengths(dataset.answers, out / "lengths.png").name
    if scores:
        figures["reward_vs_cost"] = plot_reward_cost(dataset.answers, scores, report["scores"],
                                                     out / "reward_vs_cost.png").name
    report = {**report, "figures": figures}
    write_json(out / "analysis.json", report)
    (out / "analysis.md").write_text(analysis_markdown(report))
    return figures


def analysis_markdown(report: Mapping[str, Any]) -> str:
    lines = [f"# Dataset analysis: {report['source']}", "",
             f"Schema `{report['schema']}`: {report['answers']} answers to {report['prompts']} prompts; "
             f"{report['safe_answers']} safe, {report['unsafe_answers']} unsafe.", ""]
    figures = report.get("figures", {})
    if "decoupling" in report:
        d = report["decoupling"]
        lines += ["## Helpfulness and harmlessness", "",
                  f"The more helpful answer is also the safer one in **{d['better_is_safer']} of {d['pairs']} pairs "
                  f"({_fmt(d['better_is_safer_share'])})**: the two labels are decoupled, which is why Safe RLHF "
                  "trains a reward and a cost model apart.", "",
                  "| pairs | n | more helpful = safer | share |", "|---|---|---|---|"]
        for g in ("both_safe", "one_safe", "both_unsafe"):
            lines.append(f"| {g} | {d[g]['pairs']} | {d[g]['better_is_safer']} | {_fmt(d[g]['better_is_safer_share'])} |")
        lines += ["", f"In one-safe pairs the more helpful answer is the safe one in "
                  f"{d['one_safe']['better_is_the_safe_answer']} of {d['one_safe']['pairs']}; "
                  f"safer-label conflicts (the safer pick is the unsafe answer): {d['one_safe']['safer_label_conflicts']}.", ""]
        lines += [f"![decoupling]({figures['decoupling']})", ""] if "decoupling" in figures else []
    lines += ["## Safe/unsafe balance per harm category", "", f"Categories from: {report['category_origin']}.", ""]
    if report["category_balance"]:
        lines += ["| category | safe | unsafe | unsafe share |", "|---|---|---|---|"]
        for c, v in report["category_balance"].items():
            total = v["safe"] + v["unsafe"]
            lines.append(f"| {c} | {v['safe']} | {v['unsafe']} | {_fmt(v['unsafe'] / total if total else None)} |")
        lines += ["", f"![category balance]({figures['category_balance']})", ""]
    else:
        lines += ["No category labels: give `prompt_categories` (a prompt set with categories) to join them.", ""]
    co = report["co_occurrence"]
    lines += ["## Category co-occurrence", ""]
    if co["categories"]:
        lines += [f"{co['flagged_answers']} answers flag a category; {co['multi_category_answers']} flag more than one.",
                  "", f"![co-occurrence]({figures['co_occurrence']})", ""]
    else:
        lines += ["No per-answer harm flags in this dataset.", ""]
    lines += ["## Severity", ""]
    if report["severity"]:
        lines += [", ".join(f"level {k}: {v}" for k, v in report["severity"].items()), "",
                  f"![severity]({figures['severity']})", ""]
    else:
        lines += ["No severity fields in this dataset.", ""]
    lines += ["## Lengths (characters)", "", "| text | n | mean | median | p90 | max | mean words |",
              "|---|---|---|---|---|---|---|"]
    for name, s in report["lengths"].items():
        lines.append(f"| {name} | {s['n']} | {_fmt(s['chars_mean'])} | {_fmt(float(s['chars_median']))} | "
                     f"{s['chars_p90']} | {s['chars_max']} | {_fmt(s['words_mean'])} |")
    lines += ["", f"![lengths]({figures['lengths']})", ""]
    if "scores" in report:
        s = report["scores"]
        lines += ["## Reward and cost models on the dataset", "",
                  f"Over {s['answers']} answers: Pearson r = {_fmt(s['pearson'])}, Spearman ρ = {_fmt(s['spearman'])}.", "",
                  "| answers | mean reward | mean cost | cost > 0 |", "|---|---|---|---|"]
        for name in ("safe", "unsafe"):
            if f"mean_cost_{name}" in s:
                lines.append(f"| {name} | {_fmt(s[f'mean_reward_{name}'])} | {_fmt(s[f'mean_cost_{name}'])} | "
                             f"{_fmt(s[f'cost_positive_share_{name}'])} |")
        lines += ["", f"![reward vs cost]({figures['reward_vs_cost']})", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ the stage
def prompt_category_map(ds_cfg) -> dict[str, frozenset[str]]:
    """Prompt text -> its categories, from a prompt set whose rows carry ``category``."""
    rows = load_dataset_from_config(ds_cfg).rows
    return {r.prompt: frozenset([r.category]) for r in rows if getattr(r, "category", None)}


def analyse_dataset(ds_cfg, out: Path, *, prompt_categories=None, reward: str | None = None,
                    cost: str | None = None, dtype: str = "float32") -> dict[str, Any]:
    """Load, measure and write; the library entry the pipeline calls."""
    if bool(reward) != bool(cost):
        raise ValueError("give both reward and cost models (the analysis correlates their scores), or neither")
    loaded = load_dataset_from_config(ds_cfg)
    records = raw_records_at(ds_cfg, loaded.row_numbers)
    joined = prompt_category_map(prompt_categories) if prompt_categories is not None else None
    dataset = build_dataset(loaded.rows, records, loaded.source, joined)
    scores = score_answers(dataset.answers, reward, cost, dtype) if reward else None
    report = analyse(dataset, scores)
    report["figures"] = write_analysis(dataset, report, out, scores)
    log.info("analysis of %s written to %s", loaded.source, out / "analysis.md")
    return report


def run(cfg) -> dict[str, Any]:
    """Entry of ``rayrlhf analyze``."""
    from rayrlhf.runs import output_dir

    out = output_dir(cfg)
    report = analyse_dataset(cfg.dataset, out, prompt_categories=cfg.prompt_categories, reward=cfg.reward,
                             cost=cfg.cost, dtype=cfg.dtype)
    print(f"analysis: {out / 'analysis.md'}")
    return report
