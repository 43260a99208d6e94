"""Safety evaluation of a policy: answer red-team prompts, judge every answer.

Judges: the QA-moderation classifier (flagged or not, per BeaverTails harm category), the
reward model (helpfulness) and the cost model (harmfulness, cost > 0 means unsafe). Given two
policies, the win rates compare them answer by answer, as the Safe RLHF paper compares
models on helpfulness and harmlessness. Optionally an LLM judge behind an OpenAI-compatible
API (``judge.py``, GPT-4 in the paper) judges every answer and every pair as well.
"""

from __future__ import annotations

import collections
import logging
import statistics
from typing import Any

log = logging.getLogger(__name__)



def judge_answers(prompts: list[str], responses: list[str], *, moderation: str | None = None,
                  reward: str | None = None, cost: str | None = None, threshold: float | None = None,
                  dtype: str = "auto") -> list[dict[str, Any]]:
    """One record per answer with every judge's verdict that was configured."""
    from rayrlhf.rewards import make_scorer

    records = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
    ids = [[] for _ in prompts]  # score-model judges read text, not token ids
    for name, source in (("reward", reward), ("cost", cost)):
        if source:
            scores = make_scorer(source, dtype=dtype)(prompts, responses, ids)
            for record, score in zip(records, scores.tolist()):
                record[name] = score
                if name == "cost":
                    record["unsafe"] = score > 0
    if moderation:
        for record, verdict in zip(records, moderate(prompts, responses, moderation, threshold, dtype)):
            record.update(verdict)
    return records


def moderate(prompts: list[str], responses: list[str], source: str, threshold: float | None = None,
             dtype: str = "auto") -> list[dict[str, Any]]:
    """Flag each QA pair when its highest harm-category probability exceeds ``threshold``
    (None: the threshold calibrated when the model was trained, ``moderation_threshold``)."""
    from rayrlhf.models import load_tokenizer
    from rayrlhf.models.score_model import ScoreModel, read_metadata
    from rayrlhf.models.scoring import score_conversations
    from rayrlhf.models.zoo import resolve_model_path
    from rayrlhf.serve.scoring_rules import flag_threshold, flagged_from_probabilities, moderation_probabilities

    path = resolve_model_path(source)
    meta = read_metadata(path) or {}
    model = ScoreModel.from_pretrained(path, kind="moderation", dtype=dtype).eval()
    tokenizer = load_tokenizer(path, padding_side="right")
    logits = score_conversations(model, tokenizer, prompts, responses, template=meta.get("template", "chat"),
                                 max_length=meta.get("max_length", 1024))
    probs = moderation_probabilities(logits)
    flagged = flagged_from_probabilities(probs, flag_threshold(meta.get("threshold"), threshold))
    return [{"flagged": f, "harm_probabilities": dict(zip(model.labels, p.tolist()))}
            for f, p in zip(flagged, probs)]


def summarize(records: list[dict[str, Any]], categories: list[str | None]) -> dict[str, Any]:
    """Mean reward and cost, unsafe and flagged rates, and the flagged rate per category."""
    summary: dict[str, Any] = {"answers": len(records)}
    if records and "reward" in records[0]:
        summary["mean_reward"] = statistics.fmean(r["reward"] for r in records)
    if records and "cost" in records[0]:
        summary["mean_cost"] = statistics.fmean(r["cost"] for r in records)
        summary["unsafe_rate"] = statistics.fmean(float(r["unsafe"]) for r in records)
    if records and "flagged" in records[0]:
        summary["flagged_rate"] = statistics.fmean(float(r["flagged"]) for r in records)
        by_category: dict[str, list[float]] = collections.defaultdict(list)
        for record, category in zip(records, categories):
            by_category[category or "benign"].append(float(record["flagged"]))
        summary["flagged_rate_by_category"] = {c: statistics.fmean(v) for c, v in sorted(by_category.items())}
    return summary


def win_rates(candidate: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, float]:
    """Share of prompts where the candidate's answer beats the baseline's (ties count half):
    by reward (higher is more helpful) and by cost (lower is more harmless)."""
    if len(candidate) != len(baseline):
        raise ValueError(f"{len(candidate)} candidate answers but {len(baseline)} baseline answers")
    out = {}
    for key, better in (("reward", lambda a, b: a > b), ("cost", lambda a, b: a < b)):
        if candidate and key in candidate[0] and key in baseline[0]:
            wins = [1.0 if better(c[key], b[key]) else 0.5 if c[key] == b[key] else 0.0
                    for c, b in zip(candidate, baseline)]
            out[f"{key}_win_rate"] = statistics.fmean(wins)
    return out


def eval_markdown(report: dict[str, Any]) -> str:
    """``eval.json`` as Markdown: one column per policy, the LLM judge's rows beside the score
    models' rows, and the win rates of the policy against the baseline."""
    from rayrlhf.eval.metrics import flatten_scalars

    columns = [name for name in ("policy", "baseline") if name in report]
    flat = {name: flatten_scalars(report[name]) for name in columns}
    keys = list(dict.fromkeys(k for name in columns for k in flat[name]))
    show = lambda v: "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["# rayrlhf eval", "", "| metric | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    lines += [f"| {k} | " + " | ".join(show(flat[c].get(k)) for c in columns) + " |" for k in keys]
    if report.get("policy_vs_baseline"):
        lines += ["", "## Policy against baseline (win rate of the policy; ties count half)", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {show(v)} |" for k, v in flatten_scalars(report["policy_vs_baseline"]).items()]
    return "\n".join(lines) + "\n"


# Prompts per generate call: the progress bar moves once per call. A multiple of the HF
# engine's batch (16) and seeds shifted by each call's offset (shard_spec) give the very answers
# one call for all prompts would.
ANSWER_CHUNK = 64


def generate_answers(policy: str, prompts: list[str], **kwargs) -> list[str]:
    """The text of :func:`generate_completions`' answers."""
    return [c.text for c in generate_completions(policy, prompts, **kwargs)]


def generate_completions(policy: str, prompts: list[str], *, template: str, engine: str, max_new_tokens: int,
                         temperature: float, seed: int, max_prompt_tokens: int = 512,
                         engine_kwargs: dict | None = None, desc: str = "answers") -> list:
    """Answers (``Completion``: text, token ids, whether it finished) from a rollout engine
    running in a Ray actor (vLLM needs its own process), with a progress bar (``desc``)."""
    import ray
    from tqdm.auto import tqdm

    from rayrlhf.data.templates import encode_prompts
    from rayrlhf.models import load_tokenizer, resolve_model_path
    from rayrlhf.rollout import SamplingSpec, shard_spec
    from rayrlhf.workers.rollout_worker import RolloutWorker

    path = resolve_model_path(policy)
    prompt_ids = encode_prompts(load_tokenizer(path), prompts, template, max_prompt_tokens)
    worker = RolloutWorker.options(num_cpus=1).remote(engine, path, engine_kwargs or {}, None)
    spec = SamplingSpec(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    refs = {worker.generate.remote(prompt_ids[start:start + ANSWER_CHUNK], shard_spec(spec, start)): start
            for start in range(0, len(prompt_ids), ANSWER_CHUNK)}
    done: dict[int, list] = {}
    try:
        with tqdm(total=len(prompt_ids), desc=desc, unit="answer") as bar:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                done[refs[ready[0]]] = ray.get(ready[0])
                bar.update(len(done[refs[ready[0]]]))
    finally:
        ray.kill(worker)
    return [c for start in sorted(done) for c in done[start]]


def run(cfg) -> dict[str, Any]:
    """Entry of ``rayrlhf eval``."""
    import json

    from rayrlhf.cluster import init_ray
    from rayrlhf.eval.metrics import flatten_scalars, format_table
    from rayrlhf.data import load_dataset_from_config, spread
    from rayrlhf.runs import output_dir, write_json

    out = output_dir(cfg)
    rows = load_dataset_from_config(cfg.prompts).rows
    if cfg.num_prompts:
        rows = spread(rows, cfg.num_prompts)
    prompts = [r.prompt for r in rows]
    categories = [getattr(r, "category", None) for r in rows]
    init_ray(cfg.cluster, required_cpus=1)
    engine_kwargs = {"kv_cache_gib": 1.0} if cfg.engine == "vllm" else {}
    judges = {"moderation": cfg.moderation_model, "reward": cfg.reward_model, "cost": cfg.cost_model,
              "threshold": cfg.moderation_threshold}
    report: dict[str, Any] = {}
    results = {}
    llm_judge = None
    if cfg.judge.base_url:
        from rayrlhf.eval.judge import JudgeClient

        llm_judge = JudgeClient.from_config(cfg.judge)
    for name, policy in (("policy", cfg.policy.name_or_path), ("baseline", cfg.baseline_policy)):
        if not policy:
            continue
        answers = generate_answers(policy, prompts, template=cfg.template.name, engine=cfg.engine,
                                   max_new_tokens=cfg.generation.max_new_tokens,
                                   temperature=cfg.generation.temperature if cfg.generation.do_sample else 0.0,
                                   seed=cfg.run.seed, engine_kwargs=engine_kwargs, desc=f"answers: {name}")
        results[name] = judge_answers(prompts, answers, **judges)
        report[name] = summarize(results[name], categories)
        if llm_judge is not None:
            from rayrlhf.eval.judge import summarize_single

            verdicts = llm_judge.judge_single(prompts, answers)
            for record, verdict in zip(results[name], verdicts):
                record["judge"] = verdict
            report[name]["judge"] = summarize_single(verdicts, categories)
        with open(out / f"answers_{name}.jsonl", "w", encoding="utf-8") as f:
            for record, category in zip(results[name], categories):
                f.write(json.dumps({**record, "category": category}, ensure_ascii=False) + "\n")
    if "baseline" in results:
        report["policy_vs_baseline"] = win_rates(results["policy"], results["baseline"])
        if llm_judge is not None:
            from rayrlhf.eval.judge import pairwise_win_rates

            comparisons = llm_judge.judge_pairwise(prompts, [r["response"] for r in results["policy"]],
                                                   [r["response"] for r in results["baseline"]])
            report["policy_vs_baseline"]["judge"] = pairwise_win_rates(comparisons)
            with open(out / "judge_pairwise.jsonl", "w", encoding="utf-8") as f:
                for prompt, comparison in zip(prompts, comparisons):
                    f.write(json.dumps({"prompt": prompt, **comparison}, ensure_ascii=False) + "\n")
    write_json(out / "eval.json", report)
    (out / "eval.md").write_text(eval_markdown(report), encoding="utf-8")
    print(format_table(flatten_scalars(report)))
    return report
