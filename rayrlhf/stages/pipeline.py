"""``rayrlhf pipeline``: every stage in order on one config, ending in a report a sceptic accepts.

1. prepare the policy, validate the datasets;
2. **split**: hold out a fixed share of the demo prompt pool (``rayrlhf.data.splits``) from every
   training set; the held-out harmful prompts come from BeaverTails-Evaluation when it is
   available (it shares no prompt with training), the held-out benign ones from the demo
   split and the Alpaca sample. The split files are written to ``splits/``;
3. (``run_sft=true``) supervised fine-tuning of the policy;
4. **on-policy judge data**: the starting policy answers the training prompts and the refusal
   rule labels its answers (``rayrlhf.eval.onpolicy``), so the judges learn what *this*
   policy's harmful answers look like;
5. train the reward, cost and moderation models (the moderation threshold calibrated on
   held-out rows);
6. PPO-Lag with the trained reward and cost models; with ``rounds`` > 1, more Safe RLHF rounds
   (:func:`next_round`: fresh red-team answers -> labels -> judges retrained -> PPO-Lag again);
7. evaluate the initial, SFT'd and final policies on the held-out prompts with every judge,
   independent ones first, with bootstrap intervals (``rayrlhf.eval.heldout``);
8. ``report/report.md``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rayrlhf.data import load_dataset_from_config, spread
from rayrlhf.runs import output_dir, seed_everything, write_json
from rayrlhf.stages.data_check import check_dataset
from rayrlhf.stages.prepare import prepare_models

log = logging.getLogger(__name__)

SCORE_DATASET = {"reward": "preferences", "cost": "preferences", "moderation": "qa_classification"}


def score_model_config(cfg, kind: str, out_dir, dataset=None):
    """The ``train-<kind>`` config the pipeline's settings imply (``dataset``: a DatasetConfig
    node replacing the configured one, e.g. the held-out-filtered file)."""
    from rayrlhf.config.schema import ScoreTrainConfig

    return OmegaConf.merge(OmegaConf.structured(ScoreTrainConfig), {
        "run": {"seed": cfg.run.seed, "output_dir": str(out_dir), "log_level": cfg.run.log_level,
                "verbose": cfg.run.verbose},
        **_tracking(cfg, out_dir),
        "cluster": cfg.cluster, "kind": kind, "model": cfg.model,
        "dataset": dataset if dataset is not None else getattr(cfg, SCORE_DATASET[kind]),
        "eval_fraction": cfg.eval_fraction, "template": cfg.template, "training": cfg.score_training,
        "moderation_threshold": cfg.moderation_threshold,
        "moderation_max_false_positive_rate": cfg.moderation_max_false_positive_rate,
    })


def sft_config(cfg, out_dir, dataset=None):
    """The ``train-sft`` config the pipeline's settings imply."""
    from rayrlhf.config.schema import SFTConfig

    return OmegaConf.merge(OmegaConf.structured(SFTConfig), {
        "run": {"seed": cfg.run.seed, "output_dir": str(out_dir), "log_level": cfg.run.log_level,
                "verbose": cfg.run.verbose},
        **_tracking(cfg, out_dir),
        "cluster": cfg.cluster, "model": cfg.model, "dataset": dataset if dataset is not None else cfg.sft,
        "eval_fraction": cfg.eval_fraction, "template": cfg.template, "training": cfg.sft_training,
    })


def ppo_lag_config(cfg, reward: str, cost: str, out_dir, policy=None, prompts=None, ptx=None):
    """The ``ppo-lag`` config the pipeline's settings imply (``policy``: a ModelConfig node
    replacing ``cfg.model``, e.g. the SFT'd policy; ``prompts``: a DatasetConfig node; ``ptx``:
    the SFT rows of the PTX term, used when ``ppo.ptx_coef`` > 0)."""
    from rayrlhf.config.schema import PPOLagConfig

    return OmegaConf.merge(OmegaConf.structured(PPOLagConfig), {
        "run": {"seed": cfg.run.seed, "output_dir": str(out_dir), "log_level": cfg.run.log_level,
                "verbose": cfg.run.verbose},
        **_tracking(cfg, out_dir),
        "cluster": cfg.cluster, "policy": policy if policy is not None else cfg.model, "reward": reward,
        "cost": cost, "prompts": prompts if prompts is not None else cfg.prompts,
        "template": cfg.template, "rollout": cfg.rollout, "ppo": cfg.ppo, "lagrange": cfg.lagrange,
        "resources": cfg.resources, "steps": cfg.ppo_steps, "save_every": 0,
        "benign_prompt_share": cfg.benign_prompt_share,
        "ptx": ptx if ptx is not None and cfg.ppo.ptx_coef else None,
    })


def _tracking(cfg, out_dir) -> dict[str, Any]:
    """A stage's loggers: the pipeline's, each stage a run of its own in the trackers,
    grouped under the pipeline run (its folder name unless ``tracking.group`` is set) and named
    ``<group>/<stage folder>`` (``round-2/train-cost`` stays apart from round 1's ``train-cost``)."""
    group = cfg.tracking.group or Path(cfg.run.output_dir).name
    try:
        stage = Path(out_dir).resolve().relative_to(Path(cfg.run.output_dir).resolve()).as_posix()
    except ValueError:  # a stage folder outside the pipeline's
        stage = Path(out_dir).name
    return {"logger": list(cfg.logger), "tracking": OmegaConf.merge(OmegaConf.structured(cfg.tracking),
                                                                    {"group": group, "run_name": f"{group}/{stage}"})}


# --------------------------------------------------------------------- held-out split
def _file_dataset(path: Path, schema: str) -> dict[str, Any]:
    return {"source": str(path), "schema": schema}


def _optional_rows(ds_cfg, what: str) -> list | None:
    """Rows of an optional evaluation set; None (with a warning) when its file is absent, as
    the shared BeaverTails/Alpaca samples are on machines without ``../shared/data``."""
    if ds_cfg is None:
        return None
    source = str(ds_cfg.source)
    if not source.startswith(("demo:",)) and "/" in source and not Path(source).expanduser().exists():
        log.warning("%s: %s not found; using the demo held-out split instead", what, source)
        return None
    return load_dataset_from_config(ds_cfg).rows


def analyse_training_data(data: dict[str, Any], cfg, out: Path) -> dict[str, dict[str, Any]]:
    """``rayrlhf analyze`` on the preference and QA rows the judges train on (cheap: no model),
    the prompt set's categories joined to the preference prompts."""
    from rayrlhf.eval.dataset_analysis import analyse_dataset

    found = {}
    for name in ("preferences", "qa_classification"):
        if data[name].schema not in ("preference", "qa_classification"):
            continue
        analysis = analyse_dataset(data[name], out / name, prompt_categories=cfg.prompts)
        found[name] = {"source": analysis["source"], "decoupling": analysis.get("decoupling"),
                       "link": f"analysis/{name}/analysis.md"}
    return found


def build_splits(cfg, out: Path) -> dict[str, Any]:
    """Write the training datasets without held-out prompts and the held-out prompt sets into
    ``out``; return their DatasetConfig-style nodes and the evaluation prompts."""
    from rayrlhf.data import PromptRow
    from rayrlhf.data.loaders import write_rows
    from rayrlhf.data.splits import assert_disjoint, benign_share_indices, drop_prompts, keep_share, split_rows
    from rayrlhf.eval.refusal import is_refusal

    fraction = cfg.heldout_fraction
    prompts_heldout = split_rows(load_dataset_from_config(cfg.prompts).rows, fraction)[1]
    harmful_pool = _optional_rows(cfg.heldout_harmful, "heldout_harmful")
    external = harmful_pool is not None
    harmful_source = cfg.heldout_harmful.source if external else "demo held-out split"
    if not external:
        harmful_pool = [r for r in prompts_heldout if r.category]
    harmful_rows = spread(harmful_pool, cfg.num_heldout_harmful) if cfg.num_heldout_harmful else harmful_pool
    # Only an external set has prompts left over once the held-out ones are drawn.
    redteam_rows = redteam_training_rows(harmful_pool, harmful_rows, cfg.num_redteam_train) if external else []
    benign_rows = [r for r in prompts_heldout if not r.category]
    extra_benign = _optional_rows(cfg.heldout_benign, "heldout_benign")
    if extra_benign:
        benign_rows += [PromptRow(prompt=r.prompt, category=None, category_id=None) for r in extra_benign]
    eval_prompts = [r.prompt for r in harmful_rows] + [r.prompt for r in benign_rows]

    nodes: dict[str, Any] = {}
    counts: dict[str, Any] = {"heldout_fraction": fraction}
    for name in ("prompts", "preferences", "qa_classification", "sft"):
        rows = load_dataset_from_config(getattr(cfg, name)).rows
        kept = drop_prompts(split_rows(rows, fraction)[0], eval_prompts)
        counts[f"{name}_dropped_rows"] = len(rows) - len(kept)
        if name == "prompts":
            kept += redteam_rows
            train_prompts = kept
        if name == "sft":
            sft_rows = kept
        assert_disjoint([r.prompt for r in kept], eval_prompts, f"{name} ({getattr(cfg, name).source})")
        path = write_rows(kept, out / f"{name}_train.json")
        nodes[name] = _file_dataset(path, getattr(cfg, name).schema)
        counts[f"{name}_train_rows"] = len(kept)
    # The PTX term's rows: the SFT rows' helpful answers and ptx_refusal_share of their refusals.
    ptx_rows = keep_share(sft_rows, [is_refusal(r.output) for r in sft_rows], cfg.ptx_refusal_share)
    ptx_node = _file_dataset(write_rows(ptx_rows, out / "ptx_train.json"), "sft")
    counts["ptx_train_rows"] = len(ptx_rows)
    # The mix PPO-Lag draws its prompts from (benign ones repeated up to benign_prompt_share).
    ppo_prompts = [train_prompts[i] for i in benign_share_indices(train_prompts, cfg.benign_prompt_share)]
    counts.update({"prompts_ppo_draws": len(ppo_prompts),
                   "prompts_ppo_benign_share": sum(not r.category for r in ppo_prompts) / max(1, len(ppo_prompts))})
    write_rows(harmful_rows, out / "heldout_harmful.json")
    write_rows(benign_rows, out / "heldout_benign.json")
    counts.update({"heldout_harmful": len(harmful_rows), "heldout_harmful_source": harmful_source,
                   "heldout_benign": len(benign_rows), "redteam_train_rows": len(redteam_rows)})
    write_json(out / "splits.json", counts)
    return {"datasets": nodes, "counts": counts, "harmful": harmful_rows, "benign": benign_rows,
            "train_prompts": train_prompts, "ppo_prompts": ppo_prompts, "redteam": redteam_rows, "ptx": ptx_node,
            "harmful_pool": harmful_pool if external else []}


def redteam_training_rows(pool: list, heldout: list, n: int) -> list:
    """Up to ``n`` red-team prompts of ``pool`` (spread over its categories) that are not in
    ``heldout``: the policy meets harmful requests in PPO-Lag, and the cost model learns what
    the policy's own harmful answers look like, on prompts the evaluation never uses."""
    from rayrlhf.data.splits import normalize_prompt

    if n <= 0:
        return []
    heldout_prompts = {normalize_prompt(r.prompt) for r in heldout}
    return spread([r for r in pool if normalize_prompt(r.prompt) not in heldout_prompts], n)


# ------------------------------------------------------------------ on-policy judge data
def onpolicy_preferences(cfg, policy: str, prompt_rows: list, out: Path, base: dict[str, list],
                         redteam_prompts: list[str] = ()) -> dict[str, Any]:
    """The policy answers ``prompt_rows`` (greedy, then sampled); the refusal rule labels the
    answers; the pairs join each judge's preference rows (``base``: kind -> rows) in a file per
    judge. The greedy and the sampled answers (what PPO-Lag's rollouts look like) are kept
    for :func:`start_cost`."""
    from rayrlhf.data import PreferenceRow
    from rayrlhf.data.loaders import write_rows
    from rayrlhf.data.splits import normalize_prompt
    from rayrlhf.eval.onpolicy import preference_rows
    from rayrlhf.eval.safety import generate_completions

    settings = cfg.onpolicy
    prompts = [r.prompt for r in prompt_rows]
    harmful = [bool(r.category) for r in prompt_rows]
    samples: list[list[str]] = [[] for _ in prompts]
    sampled: list[dict[str, Any]] = []
    greedy: list[dict[str, Any]] = []
    for i in range(settings.samples_per_prompt):
        temperature = 0.0 if i == 0 else settings.temperature  # the first answer is the greedy one
        completions = generate_completions(policy, prompts, template=cfg.template.name, engine=cfg.eval_engine,
                                           max_new_tokens=settings.max_new_tokens, temperature=temperature,
                                           seed=cfg.run.seed + i, engine_kwargs=_engine_kwargs(cfg),
                                           desc=f"on-policy answers {i + 1}/{settings.samples_per_prompt}")
        for prompt, sample, completion in zip(prompts, samples, completions):
            sample.append(completion.text)
            (sampled if i > 0 else greedy).append({"prompt": prompt, "response": completion.text,
                                                   "finished": completion.finished})
    pairs = [PreferenceRow.from_dict(row, source="on-policy answers", row=i)
             for i, row in enumerate(preference_rows(prompts, harmful, samples))]
    write_rows(pairs, out / "onpolicy_preferences.json")
    write_json(out / "onpolicy_sampled_answers.json", sampled)
    write_json(out / "onpolicy_greedy_answers.json", greedy)
    # The cost model learns harm from every pair; the reward model (helpfulness) keeps to the
    # pairs of the configured prompt set: the red-team pairs only say "going along is more
    # helpful", and cost it a longer training.
    redteam = {normalize_prompt(p) for p in redteam_prompts}
    new_rows = {"cost": pairs, "reward": [p for p in pairs if normalize_prompt(p.prompt) not in redteam]}
    rows = {kind: [*base[kind], *new_rows[kind]] for kind in ("cost", "reward")}
    datasets = {"cost": write_rows(rows["cost"], out / "preferences_with_onpolicy.json"),
                "reward": write_rows(rows["reward"], out / "preferences_with_onpolicy_for_reward.json")}
    stats = {"prompts": len(prompts), "harmful_prompts": sum(harmful), "samples_per_prompt": settings.samples_per_prompt,
             "pairs": len(pairs), "unsafe_answers_to_harmful_prompts": sum(not p.is_safe(0) for p in pairs),
             "redteam_pairs": len(pairs) - len(new_rows["reward"]), "base_rows": len(base["cost"])}
    write_json(out / "onpolicy.json", stats)
    return {"datasets": {kind: _file_dataset(path, "preference") for kind, path in datasets.items()},
            "rows": rows, "new_rows": {kind: len(r) for kind, r in new_rows.items()},
            "stats": stats, "sampled": sampled, "greedy": greedy}


def start_cost(cost: str, answers: list[dict[str, Any]], ppo_prompts: list | None = None) -> dict[str, Any]:
    """The cost model's mean over the starting policy's answers to the training prompts
    (sampled or greedy: ``threshold_answers``), scored as PPO-Lag scores its rollouts (an
    answer the length limit cut off counts as unfinished), each answer weighted by how often
    its prompt occurs in ``ppo_prompts`` (the rows PPO-Lag draws from, benign ones repeated),
    so the mean is over PPO-Lag's mix. As the cost threshold it says: grow more helpful, but
    no less safe than where you started."""
    import numpy as np

    from rayrlhf.data.splits import normalize_prompt, prompt_weights
    from rayrlhf.rewards import make_scorer

    if not answers:
        raise ValueError("threshold_from_start needs the starting policy's on-policy answers (onpolicy.enabled, "
                         "and onpolicy.samples_per_prompt >= 2 for sampled ones)")
    scores = make_scorer(cost)([a["prompt"] for a in answers], [a["response"] for a in answers],
                               [[] for _ in answers], [a["finished"] for a in answers]).numpy()
    counts = prompt_weights(ppo_prompts) if ppo_prompts else {}
    weights = np.array([counts.get(normalize_prompt(a["prompt"]), 1) for a in answers], dtype=np.float64)
    return {"mean": float(np.average(scores, weights=weights)), "unweighted_mean": float(np.mean(scores)),
            "unsafe_share": float(np.average(scores > 0, weights=weights)), "answers": len(scores)}


def _engine_kwargs(cfg) -> dict[str, Any]:
    return {"kv_cache_gib": 1.0} if cfg.eval_engine == "vllm" else {}


# --------------------------------------------------------------------------- evaluation
def evaluate_heldout(cfg, policy: str, harmful_rows: list, benign_rows: list, judges: dict[str, str | None],
                     llm_judge=None, name: str = "policy") -> list[dict[str, Any]]:
    """Greedy answers of ``policy`` to the held-out prompts, judged by every judge."""
    from rayrlhf.eval.refusal import refusal_verdicts
    from rayrlhf.eval.safety import generate_answers, judge_answers

    rows = [*harmful_rows, *benign_rows]
    prompts = [r.prompt for r in rows]
    is_harmful = [True] * len(harmful_rows) + [False] * len(benign_rows)
    gen = cfg.generation
    answers = generate_answers(policy, prompts, template=cfg.template.name, engine=cfg.eval_engine,
                               max_new_tokens=gen.max_new_tokens,
                               temperature=gen.temperature if gen.do_sample else 0.0, seed=cfg.run.seed,
                               engine_kwargs=_engine_kwargs(cfg), desc=f"held-out answers: {name}")
    records = judge_answers(prompts, answers, moderation=judges.get("moderation"), reward=judges.get("reward"),
                            cost=judges.get("cost"), threshold=cfg.moderation_threshold)
    for record, verdict, row, harmful in zip(records, refusal_verdicts(is_harmful, answers), rows, is_harmful):
        record.update(verdict, harmful_prompt=harmful, category=getattr(row, "category", None))
    if llm_judge is not None:
        for record, verdict in zip(records, llm_judge.judge_single(prompts, answers)):
            record["judge"] = verdict
    return records


def run(cfg) -> dict:
    from rayrlhf.cluster import init_ray, required_cpus
    from rayrlhf.eval.heldout import by_category, compare_policies, cost_model_recall_on_compliance, headline
    from rayrlhf.eval.report import write_report
    from rayrlhf.trainers import ppo_lag, score_trainer, sft_trainer
    from rayrlhf.trainers.metrics_log import read_metrics_jsonl

    seed_everything(cfg.run.seed)
    out = output_dir(cfg)
    report: dict = {"timing_s": {}}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        report["timing_s"][name] = round(time.perf_counter() - start, 2)
        log.info("pipeline: %s done in %.1f s", name, report["timing_s"][name])
        return result

    report["models"] = timed("prepare", lambda: prepare_models([cfg.model.name_or_path]))
    report["datasets"] = timed("data_check", lambda: {
        name: check_dataset(getattr(cfg, name)) for name in ("preferences", "prompts", "qa_classification", "sft")
    })
    splits = timed("split", lambda: build_splits(cfg, out / "splits"))
    report["splits"] = splits["counts"]
    data = {name: OmegaConf.merge(getattr(cfg, name), node) for name, node in splits["datasets"].items()}
    data["ptx"] = OmegaConf.merge(cfg.sft, splits["ptx"])
    report["analysis"] = timed("analyze", lambda: analyse_training_data(data, cfg, out / "analysis"))
    init_ray(cfg.cluster, required_cpus=required_cpus(cfg))

    # The policy PPO-Lag starts from: the SFT'd one when asked.
    policies = {"initial": cfg.model.name_or_path}
    start_policy = cfg.model
    if cfg.run_sft:
        sub = sft_config(cfg, out / "train-sft", dataset=data["sft"])
        report["sft"] = timed("train_sft", lambda: sft_trainer.run(sub))
        start_policy = OmegaConf.merge(cfg.model, {"name_or_path": str(out / "train-sft" / "model")})
        policies["sft"] = start_policy.name_or_path

    judge_data = {kind: data[name] for kind, name in SCORE_DATASET.items()}
    onpolicy = None
    if cfg.onpolicy.enabled and ({"reward", "cost"} & set(cfg.score_models)):
        base = load_dataset_from_config(data["preferences"]).rows
        onpolicy = timed("onpolicy_judge_data", lambda: onpolicy_preferences(
            cfg, start_policy.name_or_path, splits["train_prompts"], out / "judge-data",
            {"cost": base, "reward": base}, [r.prompt for r in splits["redteam"]]))
        report["onpolicy"] = onpolicy["stats"]
        for kind, node in onpolicy["datasets"].items():
            judge_data[kind] = OmegaConf.merge(data["preferences"], node)
    judges: dict[str, str] = {}
    report["score_models"] = {}
    for kind in cfg.score_models:
        sub = score_model_config(cfg, kind, out / f"train-{kind}", dataset=judge_data[kind])
        report["score_models"][kind] = timed(f"train_{kind}", lambda: score_trainer.run(sub))
        judges[kind] = str(out / f"train-{kind}" / "model")
    reward, cost = cfg.reward or judges.get("reward"), cfg.cost or judges.get("cost")
    if cfg.threshold_from_start and cost and onpolicy:
        start_answers = onpolicy[cfg.threshold_answers]
        report["start_cost"] = timed("start_cost", lambda: start_cost(cost, start_answers, splits["ppo_prompts"]))
        report["start_cost"]["which_answers"] = cfg.threshold_answers
        cfg.lagrange.threshold = report["start_cost"]["mean"]
        log.info("pipeline: cost threshold %.3f, the starting policy's mean cost over %d %s answers",
                 cfg.lagrange.threshold, report["start_cost"]["answers"], cfg.threshold_answers)

    history: list = []
    if cfg.ppo_steps > 0 and reward and cost:
        sub = ppo_lag_config(cfg, reward, cost, out / "ppo-lag", policy=start_policy, prompts=data["prompts"],
                             ptx=data["ptx"])
        history = timed("ppo_lag", lambda: ppo_lag.run(sub))
        policies["ppo_lag"] = str(out / "ppo-lag" / "policy")
        report["ppo_lag"] = history[-1]

    comparison_runs: dict[str, list] = {}
    if cfg.compare and cfg.ppo_steps > 0 and reward and cost:
        # The paper's comparison: the same start, data, judges and budget; only λ differs.
        for name, lagrange in comparison_variants(cfg).items():
            sub = ppo_lag_config(cfg, reward, cost, out / "compare" / name, policy=start_policy,
                                 prompts=data["prompts"], ptx=data["ptx"])
            sub.lagrange = lagrange
            comparison_runs[name] = timed(f"compare_{name}", lambda s=sub: ppo_lag.run(s))
            policies[name] = str(out / "compare" / name / "policy")
        if history:
            comparison_runs["ppo_lag"] = history
            policies["ppo_lag"] = policies.pop("ppo_lag")  # the trained policy stays the last column

    rounds: list[dict[str, Any]] = []
    if cfg.rounds > 1 and history:
        state = {"policy": OmegaConf.merge(cfg.model, {"name_or_path": policies["ppo_lag"]}),
                 "prompt_rows": list(splits["train_prompts"]), "judge_rows": onpolicy["rows"],
                 "judges": {"reward": reward, "cost": cost}, "used": list(splits["redteam"])}
        rounds.append(round_record(1, onpolicy, history=history, prompts_source="training prompts",
                                   retrained=["reward", "cost"]))
        for k in range(2, cfg.rounds + 1):
            rounds.append(next_round(cfg, k, state, splits, data, onpolicy[cfg.threshold_answers], out / f"round-{k}",
                                     timed))
            policies[f"round_{k}"] = state["policy"].name_or_path
        report["rounds"] = rounds

    llm_judge = None
    if cfg.judge.base_url:
        from rayrlhf.eval.judge import JudgeClient

        llm_judge = JudgeClient.from_config(cfg.judge)
    eval_judges = {"moderation": judges.get("moderation"), "reward": reward, "cost": cost}
    records = {name: timed(f"eval_{name}", lambda p=path, n=name: evaluate_heldout(
        cfg, p, splits["harmful"], splits["benign"], eval_judges, llm_judge, n)) for name, path in policies.items()}
    harmful = [r["harmful_prompt"] for r in records["initial"]]
    categories = [r["category"] for r in records["initial"]]
    rows = compare_policies(records, harmful, seed=cfg.run.seed)
    names = list(policies)
    report["eval"] = {
        "policies": policies, "measures": rows,
        "headline": headline(rows, names[0], names[-1]),
        "unsafe_by_category": {name: by_category(recs, categories, harmful) for name, recs in records.items()},
        "cost_model_recall_on_compliance": cost_model_recall_on_compliance(records[names[0]], harmful),
    }
    if comparison_runs:
        report["compare"] = compare_summary(comparison_runs, rows, out / "report")
    (out / "eval").mkdir(parents=True, exist_ok=True)
    for name, recs in records.items():
        write_json(out / "eval" / f"answers_{name}.json", recs)
    loss_curves = {stage: read_metrics_jsonl(out / stage / "metrics.jsonl")
                   for stage in ("train-sft", *(f"train-{kind}" for kind in cfg.score_models))}
    write_report(out / "report", history=history, evaluation=report["eval"], records=records,
                 splits=report["splits"], score_models=report["score_models"], onpolicy=report.get("onpolicy"),
                 timings=report["timing_s"], settings=_settings_summary(cfg), compare=report.get("compare"),
                 loss_curves=loss_curves, start_cost=report.get("start_cost"), analyses=report["analysis"],
                 rounds=rounds)
    write_json(out / "pipeline_report.json", report)
    log.info("pipeline finished; report at %s", out / "report" / "report.md")
    print(f"report: {out / 'report' / 'report.md'}")
    return report


# ------------------------------------------------------------- multi-round Safe RLHF
def next_round(cfg, k: int, state: dict[str, Any], splits: dict[str, Any], data: dict[str, Any],
               first_answers: list[dict[str, Any]], out: Path, timed) -> dict[str, Any]:
    """Round ``k`` of Safe RLHF (the Beaver v1 -> v2 -> v3 loop): the last policy answers fresh
    red-team prompts, the refusal rule labels the answers, the pairs join the judges' data,
    the judges whose data grew retrain, and PPO-Lag continues from the last policy on the
    grown prompt set. ``state`` (policy, prompt rows, judge rows, judges, red-team prompts
    used) carries from round to round and is updated here."""
    from rayrlhf.data.loaders import write_rows
    from rayrlhf.data.splits import assert_disjoint
    from rayrlhf.trainers import ppo_lag, score_trainer

    fresh = redteam_training_rows(splits["harmful_pool"], [*splits["harmful"], *state["used"]], cfg.round_prompts)
    if fresh:
        prompt_rows, source = fresh, "fresh red-team prompts"
        state["used"] += fresh
        state["prompt_rows"] += fresh
    else:  # no external set, or it is used up: the grown policy answers the training prompts again
        prompt_rows, source = state["prompt_rows"], "training prompts again (no unused red-team prompt left)"
    evaluated = [r.prompt for r in [*splits["harmful"], *splits["benign"]]]
    assert_disjoint([r.prompt for r in prompt_rows], evaluated, f"round {k} prompts")

    onpolicy = timed(f"round{k}_onpolicy_judge_data", lambda: onpolicy_preferences(
        cfg, state["policy"].name_or_path, prompt_rows, out / "judge-data", state["judge_rows"],
        [r.prompt for r in state["used"]]))  # every red-team prompt so far: their pairs stay the cost model's
    state["judge_rows"] = onpolicy["rows"]
    retrained = []
    for kind in ("reward", "cost"):
        if onpolicy["new_rows"][kind] == 0:
            continue  # nothing new to learn: the last round's judge stands
        node = OmegaConf.merge(data["preferences"], onpolicy["datasets"][kind])
        sub = score_model_config(cfg, kind, out / f"train-{kind}", dataset=node)
        timed(f"round{k}_train_{kind}", lambda s=sub: score_trainer.run(s))
        state["judges"][kind] = str(out / f"train-{kind}" / "model")
        retrained.append(kind)
    # The retrained cost model has its own scale: the threshold is re-read on it from the
    # first round's starting answers (no less safe than where the whole run started).
    if cfg.threshold_from_start:
        cfg.lagrange.threshold = timed(f"round{k}_start_cost",
                                       lambda: start_cost(state["judges"]["cost"], first_answers,
                                                          splits["ppo_prompts"]))["mean"]
    prompts_path = write_rows(state["prompt_rows"], out / "prompts_train.json")
    sub = ppo_lag_config(cfg, state["judges"]["reward"], state["judges"]["cost"], out / "ppo-lag",
                         policy=state["policy"], prompts=OmegaConf.merge(data["prompts"], _file_dataset(
                             prompts_path, "prompt")), ptx=data["ptx"])
    history = timed(f"round{k}_ppo_lag", lambda: ppo_lag.run(sub))
    record = round_record(k, onpolicy, history=history, prompts_source=source, retrained=retrained)
    record["start_policy"] = str(state["policy"].name_or_path)
    state["policy"] = OmegaConf.merge(state["policy"], {"name_or_path": str(out / "ppo-lag" / "policy")})
    return record


def round_record(k: int, onpolicy: dict[str, Any], *, history: list, prompts_source: str,
                 retrained: list[str]) -> dict[str, Any]:
    """What the report's round table shows of round ``k`` (held-out results join it there)."""
    last = history[-1]
    return {"round": k, "prompts": onpolicy["stats"]["prompts"], "prompts_source": prompts_source,
            "new_pairs": onpolicy["stats"]["pairs"], "cost_rows": len(onpolicy["rows"]["cost"]),
            "reward_rows": len(onpolicy["rows"]["reward"]), "retrained": retrained,
            "threshold": last["cost/threshold"], "final_cost": last["cost/mean"],
            "final_reward": last["reward/mean"], "final_lambda": last["lagrange/lambda"], "ppo_steps": len(history)}


def comparison_variants(cfg) -> dict[str, Any]:
    """The runs ``compare=true`` adds beside the configured PPO-Lag: plain PPO (λ = 0, the cost
    ignored) and PPO with a fixed cost penalty (λ = ``compare_fixed_lambda``); both report
    their cost against the same threshold."""
    from rayrlhf.config.schema import ConstantLagrangeConfig

    threshold = cfg.lagrange.threshold
    return {"ppo": OmegaConf.structured(ConstantLagrangeConfig(value=0.0, threshold=threshold)),
            "ppo_fixed_penalty": OmegaConf.structured(
                ConstantLagrangeConfig(value=float(cfg.compare_fixed_lambda), threshold=threshold))}


def compare_summary(runs: dict[str, list], measures: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Reward against cost of each variant's last steps (the sweep report's frontier chart, with
    the threshold) and each variant's held-out unsafe rates."""
    from rayrlhf.eval.sweep import pareto_optimal, plot_frontier, summarize_trial

    last_k = max(1, min(5, min(len(h) for h in runs.values())))
    summaries = [summarize_trial(history, last_k, trial=name, params={"run": name}) for name, history in runs.items()]
    for summary, optimal in zip(summaries, pareto_optimal([(s.cost, s.reward) for s in summaries])):
        summary.pareto = optimal
    for summary in summaries:
        summary.eval_after = {f"heldout/{row['key']}": row["policies"][summary.trial]["mean"]
                              for row in measures if summary.trial in row["policies"]}
    out.mkdir(parents=True, exist_ok=True)
    plot_frontier(summaries, ["run"], out / "compare.png", last_k)
    return {"last_k": last_k, "runs": [{"run": s.trial, "reward": s.reward, "cost": s.cost, "threshold": s.threshold,
                                        "meets_threshold": s.meets_threshold, "final_lambda": s.final_lambda,
                                        **s.eval_after} for s in summaries]}


def _settings_summary(cfg) -> dict[str, Any]:
    """The settings a reader of the report needs to judge the result."""
    return {"model": cfg.model.name_or_path, "run_sft": cfg.run_sft, "ppo_steps": cfg.ppo_steps,
            "prompts_per_step": cfg.rollout.prompts_per_step, "max_new_tokens": cfg.rollout.max_new_tokens,
            "actor_lr": cfg.ppo.actor_lr, "ptx_coef": cfg.ppo.ptx_coef, "lagrange": OmegaConf.to_container(OmegaConf.structured(cfg.lagrange)),
            "score_epochs": cfg.score_training.epochs, "onpolicy_judge_data": cfg.onpolicy.enabled,
            "redteam_train_prompts": cfg.num_redteam_train, "threshold_from_start": cfg.threshold_from_start,
            "benign_prompt_share": cfg.benign_prompt_share,
            "rounds": cfg.rounds}
