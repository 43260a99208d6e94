"""PPO-Lagrangian on Ray: the single controller.

``PPOLagDriver.step`` is the algorithm, phase by phase (Safe RLHF, Dai et al. 2023):

1. generate   rollout engines sample responses for a batch of prompts
2. score      old and reference log-probs, reward and cost values, reward and cost scores
3. advantages KL-shaped token rewards/costs, GAE for both streams, combined advantage
              (``rayrlhf.algorithms.ppo_lag_advantages``)
4. train      critics regress on their returns; the policy takes PPO steps on
              (A_r - λ A_c) / (1 + λ)
5. lagrange   λ moves with the episode cost against the threshold
6. sync       the rollout engines receive the new policy weights

The math lives in ``rayrlhf.algorithms``, the actors in ``rayrlhf.workers`` (built by
``ppo_lag_roles.build_roles``); this file composes them. Checkpoints, the metrics log and
resuming live beside it (``checkpoint_dir``, ``metrics_log``, ``resume``).
"""

from __future__ import annotations

import json
import math
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from rayrlhf.algorithms import (
    LAGRANGE_CONTROLLERS, ConstantLagrange, LagrangeController, PPOLagAdvantages, masked_mean, ppo_lag_advantages,
)
from rayrlhf.cluster import check_cluster_capacity, required_cpus
from rayrlhf.config import to_object
from rayrlhf.faults import FaultLog, NonFiniteError, WorkerFailedError, actor_failure_types, describe_nonfinite, \
    findings_message, note_unreachable_threshold
from rayrlhf.rollout import SamplingSpec
from rayrlhf.trainers import checkpoint_dir
from rayrlhf.trainers.fingerprints import ppo_lag_inputs, write_fingerprints
from rayrlhf.trainers.metrics_log import MetricsLog, tracking_settings
from rayrlhf.trainers.old_logprobs import OldLogprobSource
from rayrlhf.trainers.ppo_lag_roles import Roles, build_roles
from rayrlhf.trainers.resume import CONFIG_SNAPSHOT, check_resume_config, resume_hint, write_resume_command
from rayrlhf.types import PTXBatch, Rollout, RolloutBatch, Scores, TrainStats, build_rollout_batch
from rayrlhf.workers.critic import CriticWorker
from rayrlhf.workers.group import ActorGroup, get_fail_fast, get_fail_fast_groups
from rayrlhf.workers.policy import PolicyWorker
from rayrlhf.workers.rollout_worker import generate_across

log = logging.getLogger(__name__)
DRIVER_STATE = "driver_state.json"


def lagrange_from_config(node) -> LagrangeController:
    """The λ controller a ``lagrange`` group node describes: its ``_target_`` class built with
    the node's other keys as arguments (conf/lagrange/, rayrlhf.config.schema)."""
    from hydra.utils import instantiate

    controller = instantiate(node)
    if not isinstance(controller, LagrangeController):
        raise TypeError(f"lagrange._target_={node._target_!r} is not a Lagrange controller; choose "
                        f"lagrange={' | '.join(LAGRANGE_CONTROLLERS)}")
    return controller


def prompt_order(num_prompts: int, prompts_per_step: int, step: int, seed: int) -> list[int]:
    """Prompt indices of step ``step``: each pass over the data is a seeded permutation, so
    the data position follows from the step number alone (resume needs no iterator)."""
    steps_per_pass = max(1, num_prompts // prompts_per_step)
    data_pass, in_pass = divmod(step, steps_per_pass)
    order = list(range(num_prompts))
    random.Random(seed * 1_000_003 + data_pass).shuffle(order)
    chosen = order[in_pass * prompts_per_step:(in_pass + 1) * prompts_per_step]
    if len(chosen) < prompts_per_step:  # fewer prompts than one step: repeat them
        chosen = (chosen * (prompts_per_step // max(1, len(chosen)) + 1))[:prompts_per_step]
    return chosen


def ignores_cost(controller: LagrangeController) -> bool:
    """Whether λ stays 0 for the whole run (plain PPO): then the cost never shapes an update."""
    return isinstance(controller, ConstantLagrange) and controller.value == 0.0


def ptx_rows(cfg, tokenizer) -> PTXBatch | None:
    """The PTX data encoded as the SFT stage encodes it (loss on the answer tokens), or None
    when PTX is off (no ``ptx`` dataset or ``ppo.ptx_coef`` 0)."""
    if cfg.ptx is None or not cfg.ppo.ptx_coef:
        return None
    from rayrlhf.data import load_dataset_from_config
    from rayrlhf.trainers.sft_trainer import encode_sft

    rows = load_dataset_from_config(cfg.ptx).rows
    encoded = encode_sft(tokenizer, [r.prompt for r in rows], [r.output for r in rows], cfg.template.name,
                         cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens)
    return PTXBatch(encoded.input_ids, encoded.attention_mask, encoded.response_mask)


class PhaseTimer:
    """Seconds of each named phase of one step, and of the whole step since the timer started."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """``timing/<phase>_s``, the whole step, and the overhead (step - sum of phases)."""
        step_s = time.perf_counter() - self.started
        return {**{f"timing/{name}_s": s for name, s in self.seconds.items()}, "timing/step_s": step_s,
                "timing/overhead_s": step_s - sum(self.seconds.values())}


class PPOLagDriver:
    """Builds the roles from a ``ppo_lag`` config and runs steps."""

    def __init__(self, cfg, fault_log: FaultLog | None = None) -> None:
        from rayrlhf.data import encode_prompts, load_dataset_from_config
        from rayrlhf.models import load_tokenizer, resolve_model_path
        from rayrlhf.models.zoo import logprob_gap_tolerance

        self.cfg = cfg = to_object(cfg)
        self.seed = cfg.run.seed
        check_cluster_capacity(cfg)
        self.policy_path = resolve_model_path(cfg.policy.name_or_path)
        self.tokenizer = load_tokenizer(self.policy_path)
        self.prompts = [row.prompt for row in load_dataset_from_config(cfg.prompts).rows]
        self.prompt_ids = encode_prompts(self.tokenizer, self.prompts, cfg.template.name, cfg.rollout.max_prompt_tokens)
        self.lagrange = lagrange_from_config(cfg.lagrange)
        self.ptx = ptx_rows(cfg, self.tokenizer)
        self.step_index = 0
        self.fault_log = fault_log or FaultLog(None)
        self.consecutive_skips = 0
        # λ fixed at 0 is plain PPO: the cost never reaches the policy, so no cost critic trains.
        self.roles: Roles = build_roles(cfg, self.policy_path, cost_critic=not ignores_cost(self.lagrange))
        # The engine-vs-policy log-prob gap that rounding alone explains at their precisions.
        self.logprob_gap_tolerance = logprob_gap_tolerance(self.roles.policy_dtype, self.roles.engine_dtype)
        self.old_logprobs = OldLogprobSource.choose(
            cfg.ppo.logprobs_source, self.roles.policy_dtype, self.roles.engine_dtype,
            tolerance=self.logprob_gap_tolerance, check_every=cfg.ppo.logprob_check_every,
            check_rows=cfg.ppo.logprob_check_rows)

    @property
    def policy(self) -> ActorGroup:
        """The policy's ranks (where its weights can be read)."""
        return self.roles.policy

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, float]:
        """One PPO-Lag step. A NaN/Inf among the update's inputs stops or skips it before
        anything changes (``faults.nonfinite``); the metrics are ``step_metrics``."""
        timer, lambda_used = PhaseTimer(), self.lagrange.value
        index = prompt_order(len(self.prompts), self.cfg.rollout.prompts_per_step, self.step_index, self.seed)
        with timer.phase("generate"):
            rollout = self.generate(index, self.sampling_spec())
        with timer.phase("score"):
            scores = self.score(rollout)
        with timer.phase("advantages"):
            advantages = self.advantages(rollout.batch, scores, lambda_used)
        findings = self.nonfinite_findings(rollout.batch, scores, advantages)
        if findings:
            return self.skip_or_stop(findings, timer)
        batch = replace(rollout.batch, **vars(scores), **vars(advantages))
        with timer.phase("train"):
            stats = self.train_roles(batch)
        with timer.phase("lagrange"):
            lambda_new = self.update_lambda(batch.costs)
        with timer.phase("sync"):
            self.sync()
        self.step_index += 1
        self.consecutive_skips = 0
        return step_metrics(self.step_index, batch, stats, lambda_used=lambda_used, lambda_new=lambda_new,
                            threshold=self.lagrange.threshold, at_cap_steps=self.lagrange.at_cap_steps,
                            old_logprobs=self.old_logprobs.metrics(self.step_index - 1), timer=timer)

    def sampling_spec(self) -> SamplingSpec:
        """How this step samples: the policy's own distribution, seeded by the step."""
        rollout = self.cfg.rollout
        return SamplingSpec(max_new_tokens=rollout.max_new_tokens, temperature=rollout.temperature,
                            top_p=rollout.top_p, seed=self.seed * 1_000_003 + self.step_index)

    def generate(self, index: list[int], spec: SamplingSpec) -> Rollout:
        """Responses to the prompts ``index`` from all rollout engines, packed into a batch."""
        completions = generate_across(self.roles.rollout_workers, [self.prompt_ids[i] for i in index], spec)
        batch = build_rollout_batch([c.prompt_ids for c in completions], [c.response_ids for c in completions],
                                    [c.finished for c in completions], self.tokenizer.pad_token_id,
                                    [c.response_logprobs for c in completions])
        return Rollout(prompts=[self.prompts[i] for i in index], responses=[c.text for c in completions],
                       response_ids=[c.response_ids for c in completions], batch=batch)

    def score(self, rollout: Rollout) -> Scores:
        """Every role's view of the rollout, all requested before any is awaited. The old
        log-probs are the engine's or a policy forward pass's (``OldLogprobSource``)."""
        roles, batch, source = self.roles, rollout.batch, self.old_logprobs
        source.step_used_engine = source.use_engine and batch.rollout_logprobs is not None
        check = source.rows_to_check(self.step_index, len(batch)) if source.step_used_engine else []
        policy_calls = [] if source.step_used_engine else roles.policy.call_split(PolicyWorker.logprobs, batch)
        check_calls = [roles.policy.call_rank0(PolicyWorker.logprobs, batch.select(check))] if check else []
        policy, checked, reference, rewards, costs, *critics = get_fail_fast_groups([
            policy_calls, check_calls,
            *roles.frozen_calls(batch, rollout.prompts, rollout.responses, rollout.response_ids),
            *(critic.call_split(CriticWorker.values, batch) for critic in roles.critics),
        ])
        values = {stream: torch.cat([rank[stream] for rank in ranks]) for ranks in critics for stream in ranks[0]}
        if checked:
            rows = torch.tensor(check)
            source.record(self.step_index, batch.rollout_logprobs[rows], checked[0][0], batch.response_mask[rows])
            if not source.use_engine:  # the engine's failed the check: this step recomputes too
                source.step_used_engine = False
                policy = get_fail_fast(roles.policy.call_split(PolicyWorker.logprobs, batch))
        if source.step_used_engine:
            old_logprobs = batch.rollout_logprobs
        else:
            old_logprobs = torch.cat([logp for logp, _ in policy])
            if batch.rollout_logprobs is not None:
                source.record(self.step_index, batch.rollout_logprobs, old_logprobs, batch.response_mask)
        reward_values = values["reward"]
        return Scores(old_logprobs=old_logprobs,
                      ref_logprobs=torch.cat([logp for logp, _ in reference]),
                      reward_values=reward_values,
                      cost_values=values.get("cost", torch.zeros_like(reward_values)),
                      rewards=rewards[0].float(), costs=costs[0].float())

    def advantages(self, batch: RolloutBatch, scores: Scores, lagrange_multiplier: float) -> PPOLagAdvantages:
        ppo = self.cfg.ppo
        return ppo_lag_advantages(scores.rewards, scores.costs, scores.old_logprobs, scores.ref_logprobs,
                                  scores.reward_values, scores.cost_values, batch.response_mask,
                                  lagrange_multiplier=lagrange_multiplier, kl_coef=ppo.kl_coef,
                                  clip_range_score=ppo.clip_range_score, gamma=ppo.gamma, gae_lambda=ppo.gae_lambda)

    def train_roles(self, batch: RolloutBatch) -> TrainStats:
        """The critics and the policy train at once, each on its own data-parallel ranks."""
        ppo, roles = self.cfg.ppo, self.roles
        each = {"epochs": ppo.epochs, "minibatch_size": ppo.minibatch_size, "seed": self.seed * 7919 + self.step_index,
                "loss_aggregation": ppo.loss_aggregation}
        critic = {"clip_range_value": ppo.clip_range_value, **each}
        actor, *critics = get_fail_fast_groups([
            roles.policy.call_split(PolicyWorker.train, batch, clip_ratio=ppo.clip_ratio,
                                    entropy_coef=ppo.entropy_coef, ptx=self.ptx_for_step(), ptx_coef=ppo.ptx_coef,
                                    **each),
            *(group.call_split(CriticWorker.train, batch, **critic) for group in roles.critics),
        ])
        # Every head of a critic shares its mini-batch steps, so one stream's count is the critic's.
        skipped = {"policy": sum(rank.nonfinite_minibatches for rank in actor)}
        skipped |= {group.name: sum(next(iter(rank.values())).nonfinite_minibatches for rank in ranks)
                    for group, ranks in zip(roles.critics, critics)}
        self.report_skipped_minibatches(skipped)
        by_stream = {stream: stats for ranks in critics for stream, stats in ranks[0].items()}
        return TrainStats(actor=actor[0], reward_critic=by_stream["reward"], cost_critic=by_stream.get("cost"),
                          skipped_minibatches=skipped)

    def ptx_for_step(self) -> PTXBatch | None:
        """This step's PTX rows: a seeded pass over the PTX data, like the prompts'."""
        if self.ptx is None:
            return None
        index = prompt_order(len(self.ptx), self.cfg.ppo.ptx_rows_per_step, self.step_index, self.seed + 1)
        return self.ptx.rows(index)

    def update_lambda(self, costs: torch.Tensor) -> float:
        """λ moves with the episode costs (cost-model scores) against the threshold; the
        controller keeps its own window of recent episodes (``lagrange.window``)."""
        return self.lagrange.update(costs.tolist())

    def sync(self) -> None:
        """Policy rank 0's weights -> object store -> every rollout engine."""
        weights = self.roles.policy.call_rank0(PolicyWorker.weights)
        get_fail_fast([w.update_weights.remote(weights) for w in self.roles.rollout_workers])

    # ------------------------------------------------------------------ NaN / Inf
    def nonfinite_findings(self, batch: RolloutBatch, scores: Scores, advantages: PPOLagAdvantages) -> list[dict]:
        """NaN/Inf among what the update would use: the scores first (a broken judge or role is
        the cause), and only while those are finite, what GAE made of them."""
        mask, cfg = batch.response_mask, self.cfg
        return describe_nonfinite({
            "rewards": (scores.rewards, None, f"reward model ({cfg.reward})"),
            "costs": (scores.costs, None, f"cost model ({cfg.cost})"),
            "policy log-probs": (scores.old_logprobs, mask, "policy"),
            "reference log-probs": (scores.ref_logprobs, mask, "reference policy"),
            "reward values": (scores.reward_values, mask, "reward critic"),
            "cost values": (scores.cost_values, mask, "cost critic"),
        }) or describe_nonfinite({
            "advantages": (advantages.advantages, mask, "GAE (rewards, costs, KL shaping, values)"),
            "reward returns": (advantages.reward_returns, mask, "GAE of the reward stream"),
            "cost returns": (advantages.cost_returns, mask, "GAE of the cost stream"),
        })

    def skip_or_stop(self, findings: list[dict], timer: PhaseTimer) -> dict[str, float]:
        """NaN/Inf before any update: stop, or skip the step (no training, λ unchanged,
        the prompts count as used so that the run moves on)."""
        message = findings_message(self.step_index + 1, findings)
        policy = self.cfg.faults.nonfinite
        self.fault_log.record("nonfinite", step=self.step_index + 1, findings=findings, action=policy,
                              message=message)
        if policy == "stop":
            raise NonFiniteError(f"{message} (faults.nonfinite=stop)")
        self.consecutive_skips += 1
        limit = self.cfg.faults.max_consecutive_skips
        if self.consecutive_skips > limit:
            raise NonFiniteError(f"{message}: {self.consecutive_skips} steps in a row skipped "
                                 f"(faults.max_consecutive_skips={limit}); the source is broken, not noisy")
        log.warning("%s: step skipped (faults.nonfinite=skip)", message)
        self.step_index += 1
        return {"step": self.step_index, "faults/skipped_nonfinite": 1.0,
                "lagrange/lambda": float(self.lagrange.value), **timer.metrics()}

    def report_skipped_minibatches(self, skipped: dict[str, float]) -> None:
        """Mini-batches whose loss was NaN/Inf were not applied (all ranks of the role skipped
        them): logged, and under ``faults.nonfinite=stop`` the end of the run."""
        if not any(skipped.values()):
            return
        message = f"step {self.step_index + 1}: NaN/Inf loss, mini-batches not applied: " + ", ".join(
            f"{role} {count:.0f}" for role, count in skipped.items() if count)
        self.fault_log.record("nonfinite_loss", step=self.step_index + 1, skipped_minibatches=skipped,
                              message=message)
        if self.cfg.faults.nonfinite == "stop":
            raise NonFiniteError(message)
        log.warning(message)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, root: Path) -> Path:
        """Everything a resumed run needs, published atomically (rayrlhf.trainers.checkpoint_dir)."""
        def write(folder: Path) -> None:
            self.roles.save_checkpoint(folder)
            state = {"step": self.step_index, "lagrange": self.lagrange.state_dict(),
                     "python_random": repr(random.getstate()), "torch_seed": torch.initial_seed()}
            (folder / DRIVER_STATE).write_text(json.dumps(state, indent=2))

        return checkpoint_dir.publish_checkpoint(root, self.step_index, write, keep_last=self.cfg.keep_last_checkpoints)

    def load_checkpoint(self, path: Path) -> None:
        self.roles.load_checkpoint(path)
        state = json.loads((path / DRIVER_STATE).read_text())
        self.step_index = state["step"]
        self.lagrange.load_state_dict(state["lagrange"])
        self.sync()  # the engines still hold the initial weights

    def save_policy(self, out_dir: Path) -> Path:
        get_fail_fast(self.roles.policy.call(PolicyWorker.save_pretrained, str(out_dir), self.policy_path))
        return out_dir

    def actor_names(self) -> dict[str, str]:
        return self.roles.actor_names()

    def shutdown(self) -> None:
        self.roles.shutdown()


def step_metrics(step: int, batch: RolloutBatch, stats: TrainStats, *, lambda_used: float, lambda_new: float,
                 threshold: float, at_cap_steps: int, old_logprobs: dict[str, float],
                 timer: PhaseTimer) -> dict[str, float]:
    """One row of metrics.jsonl, by namespace (README: "Metrics")."""
    mask = batch.response_mask.float()
    timing = timer.metrics()
    return {
        "step": step,
        "rollout/response_length": float(mask.sum(-1).mean()),
        "rollout/finished": float(batch.finished.float().mean()),
        # Engine vs trained policy on the sampled tokens (OldLogprobSource.metrics): small when
        # weight sync works; with engine log-probs it is measured on a few rows every N steps.
        **old_logprobs,
        # Engine vs the initial weights (the reference): grows once the policy has moved.
        "rollout/ref_logprob_gap": float(masked_mean((batch.rollout_logprobs - batch.ref_logprobs).abs(), mask)),
        "reward/mean": float(batch.rewards.mean()),
        "cost/mean": float(batch.costs.mean()),
        "cost/threshold": float(threshold),
        "cost/violation_rate": float((batch.costs > 0).float().mean()),
        "lagrange/lambda": float(lambda_new),
        "lagrange/lambda_used": float(lambda_used),
        # Updates in a row that ended with λ at its cap (lagrange.lambda_max).
        "lagrange/at_cap_steps": float(at_cap_steps),
        "actor/kl_to_ref": float(masked_mean(batch.old_logprobs - batch.ref_logprobs, mask)),
        **{f"actor/{name}": value for name, value in vars(stats.actor).items()},
        "critic/reward_loss": stats.reward_critic.loss,
        **({"critic/cost_loss": stats.cost_critic.loss} if stats.cost_critic is not None else {}),
        "faults/nonfinite_minibatches": float(sum(stats.skipped_minibatches.values())),
        **timing,
        "timing/generate_tokens_per_s": float(mask.sum()) / max(timer.seconds["generate"], 1e-9),
    }


def run(cfg) -> list[dict[str, float]]:
    """Entry of ``rayrlhf ppo-lag``: build the workers, run ``cfg.steps`` steps, save.

    A dead worker actor costs a restart: every worker is rebuilt and the run continues from
    its newest checkpoint (metrics after it are recomputed), up to ``faults.max_restarts``."""
    from omegaconf import OmegaConf

    from rayrlhf.cluster import init_ray
    from rayrlhf.runs import output_dir

    cfg = to_object(cfg)
    out = output_dir(cfg)
    resume_point = None
    if cfg.resume_from:
        resume_point = checkpoint_dir.latest_checkpoint(cfg.resume_from)
        if resume_point is None:
            raise FileNotFoundError(f"resume_from={cfg.resume_from}: no complete checkpoint below it")
        check_resume_config(cfg, Path(cfg.resume_from))
        checkpoint_dir.remove_stale_saves(Path(cfg.resume_from) / "checkpoints")  # saves the crash cut short
    (out / CONFIG_SNAPSHOT).write_text(OmegaConf.to_yaml(cfg))
    write_fingerprints(out, ppo_lag_inputs(cfg))
    write_resume_command(out)
    init_ray(cfg.cluster, required_cpus=required_cpus(cfg))
    fault_log = FaultLog(out / "faults.jsonl")
    metrics_log = MetricsLog(tracking_settings(cfg, out), total=cfg.steps, progress="ppo-lag")
    history: list[dict[str, float]] = []
    restarts = 0
    try:
        while True:
            driver = None
            try:
                driver = PPOLagDriver(cfg, fault_log)
                if resume_point is not None:
                    driver.load_checkpoint(resume_point)
                    log.info("continuing from %s at step %d", resume_point, driver.step_index)
                history = [m for m in history if m["step"] <= driver.step_index]
                if restarts:
                    dropped = metrics_log.rewind(driver.step_index)
                    fault_log.record("recomputed_steps", steps=[m["step"] for m in dropped], rows=dropped)
                while driver.step_index < cfg.steps:
                    metrics = driver.step()
                    note_unreachable_threshold(metrics, after=cfg.faults.threshold_unreachable_after,
                                               lambda_max=getattr(driver.lagrange, "lambda_max", math.inf),
                                               threshold=driver.lagrange.threshold, fault_log=fault_log)
                    history.append(metrics)
                    metrics_log.log(metrics)
                    if cfg.save_every and driver.step_index % cfg.save_every == 0:
                        driver.save_checkpoint(out / "checkpoints")
                driver.save_checkpoint(out / "checkpoints")
                driver.save_policy(out / "policy")
                return history
            except actor_failure_types() as exc:
                dead = driver.actor_names().get(getattr(exc, "actor_id", None) or "", "a worker") if driver else \
                    "a worker (while starting)"
                restarts += 1
                resume_point = checkpoint_dir.latest_checkpoint(out) or resume_point
                step = driver.step_index + 1 if driver else None  # the step in progress
                fault_log.record("worker_died", actor=dead, step=step, restart=restarts,
                                 resume_from=str(resume_point) if resume_point else "the start",
                                 error=f"{type(exc).__name__}: {str(exc)[:2000]}")
                if restarts > cfg.faults.max_restarts:
                    raise WorkerFailedError(
                        f"{dead} died during step {step} ({type(exc).__name__}); gave up after "
                        f"faults.max_restarts={cfg.faults.max_restarts} restarts. Checkpoint: {resume_point}. "
                        f"Details in {fault_log.path}.{resume_hint(out)}") from exc
                log.error("%s died during step %s (%s); restart %d/%d from %s", dead, step, type(exc).__name__,
                          restarts, cfg.faults.max_restarts, resume_point or "the start")
            finally:
                if driver is not None:
                    driver.shutdown()
    finally:
        metrics_log.close()
