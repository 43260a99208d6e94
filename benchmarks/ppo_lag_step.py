"""PPO-Lag step time of rayrlhf on this machine, side by side with TRL 1.12's PPOTrainer.

Prints ONE JSON object on stdout (everything else goes to stderr). What it measures:

* ``rayrlhf``: for each variant (``--variants``; ``VARIANTS`` says what each changes),
  ``PPOLagDriver.step`` with SmolLM2-135M-Instruct as the policy and reference, untrained
  SmolLM2-based reward and cost *score models* (so the step does the work of a Safe-RLHF
  step: two judges, critics initialised from them), ``--prompts`` prompts x ``--new-tokens``
  new tokens, 1 PPO epoch, one mini-batch. One warm-up step, then ``--steps`` measured steps:
  median step time, per-phase medians (the driver's ``timing/*`` metrics), FLOPs per phase
  counted from the model's shapes and the step's token counts, achieved FLOP/s as a share of
  the measured matmul peak, generate tokens/s, weight-sync and orchestration shares, and the
  peak RSS of every role's process (sampled by a background thread during the measured steps).
  ``--gap-steps``: the first variant then runs on to that many steps with the engine's
  log-probs checked against the policy at every step (``rollout/logprob_gap``).
* ``peer_trl``: ``trl.experimental.ppo.PPOTrainer`` (TRL 1.12; later releases removed it) in
  its own venv (``--peer-venv``), on the same prompts, same models (the reward score model
  also initialises TRL's value model), the same batch shape, for each ``--peer-variants``
  (fp32 full fine-tuning; LoRA via TRL's ``peft_config`` in bf16). TRL is plain PPO: one
  judge and one critic, so it does less work per step than Safe RLHF (see ``work``).
* ``--lora``: full fine-tuning against LoRA (variants ``default,lora``): ``comparisons.lora_vs_full``
  puts their step times and peak RSS per role side by side.
* ``--throughput``: rollout throughput at ``--tp-prompts`` x ``--tp-new-tokens`` through the
  first variant's running vLLM driver's own generate phase (``PPOLagDriver.generate``)
  against a plain ``vllm.LLM`` in a subprocess with the same model, dtype, sampling and seeds.
* ``machine.matmul``: fp32 and bf16 matrix-product GFLOP/s measured here (one thread), the
  numbers rayrlhf's ``dtype: auto`` decides by and the peak the FLOP/s shares refer to.

Run: ``.venv/bin/python benchmarks/ppo_lag_step.py [--steps 3] [--throughput] [--gap-steps 20]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 turns token auth on for local clusters

log = logging.getLogger("bench.ppo_lag_step")
GIB = 1024 ** 3
PHASES = ("generate", "score", "advantages", "train", "lagrange", "sync", "overhead")
TRL_PIP = ["torch==2.13.0", "trl==1.12.*", "transformers", "accelerate", "datasets", "psutil", "peft"]


# ---------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """CPU model, cores and the bf16 instruction sets that decide rayrlhf's dtype."""
    import psutil
    import torch

    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("vllm", "ray", "transformers", "deepspeed"):
        try:
            versions[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - a missing package is information here
            versions[name] = f"unavailable: {exc}"
    torch.set_num_threads(1)  # the benchmark's own process computes on one thread
    return {
        "matmul": {**matmul_now(), "how": "best of 3 x 20 timed 512x512x512 products after a warm-up, one torch thread"},
        "cpu_model": model, "logical_cpus": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
        "has_amx_bf16": "amx_bf16" in flags, "has_avx512_bf16": "avx512_bf16" in flags,
        "has_avx512f": "avx512f" in flags, "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "versions": versions, "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def matmul_now() -> dict[str, float]:
    """fp32 and bf16 matrix-product GFLOP/s of one core, measured now. Taken at the start of
    the run and again before each measured part (``matmul_at_start``): the VMs this runs on
    have changed speed by up to 3x in bf16 within an hour, and TRL runs after rayrlhf."""
    import torch

    from rayrlhf.models.zoo import matmul_gflops

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"fp32_gflops_per_core": round(max(matmul_gflops(torch.float32, 512, 20) for _ in range(3)), 1),
                "bf16_gflops_per_core": round(max(matmul_gflops(torch.bfloat16, 512, 20) for _ in range(3)), 1)}
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- memory sampling
def is_ray_worker(proc) -> bool:
    """Ray renames its worker processes ``ray::<Actor>...``; raylet, GCS etc. are not workers."""
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 - the process may be gone already
        return False
    return bool(cmd) and (cmd[0].startswith("ray::") or any("default_worker.py" in c for c in cmd))


class RssSampler:
    """Background thread: peak of (driver + Ray workers) RSS, of the whole process tree, and of
    each named process (``roles``: pid -> role name; the driver is "driver").

    RSS counts shared pages (object-store mappings, shared libraries) once per process, so the
    sums are upper bounds of the real footprint, measured the same way for rayrlhf and TRL.
    """

    def __init__(self, interval_s: float = 0.5, roles: dict[int, str] | None = None) -> None:
        import psutil

        self.root = psutil.Process(os.getpid())
        self.interval_s = interval_s
        self.roles = {os.getpid(): "driver", **(roles or {})}
        self.peak_workers = 0
        self.peak_tree = 0
        self.peak_processes = 0
        self.peak_by_role: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        workers = tree = self.root.memory_info().rss
        by_role = {"driver": workers}
        children = self.root.children(recursive=True)
        for child in children:
            try:
                rss = child.memory_info().rss
            except Exception:  # noqa: BLE001 - exited between listing and reading
                continue
            tree += rss
            if is_ray_worker(child):
                workers += rss
                role = self.roles.get(child.pid, "other Ray workers (idle)")
                by_role[role] = by_role.get(role, 0) + rss
        self.peak_workers = max(self.peak_workers, workers)
        self.peak_tree = max(self.peak_tree, tree)
        self.peak_processes = max(self.peak_processes, len(children) + 1)
        for role, rss in by_role.items():
            self.peak_by_role[role] = max(self.peak_by_role.get(role, 0), rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def actor_pids(driver) -> dict[int, str]:
    """pid -> actor name of every actor of the driver's roles (what each frozen model rides in
    shows in the name: policy-0 hosts the reference, ...)."""
    import ray

    def pid_of(_worker) -> int:
        return os.getpid()

    roles = driver.roles
    named = [(a, n) for g in roles.groups for a, n in zip(g.actors, g.actor_names)]
    named += list(zip(roles.rollout_workers, roles.rollout_names))
    pids = {}
    for actor, name in named:
        try:
            pids[ray.get(actor.__ray_call__.remote(pid_of), timeout=60)] = name
        except Exception as exc:  # noqa: BLE001 - per-role memory is a detail; the totals stand
            log.warning("no pid for %s: %s", name, exc)
    hosted = {name: [role for role, group in roles.frozen_hosts.items() if group.name == name.rsplit("-", 1)[0]]
              for name in pids.values()}
    return {pid: name + (f" (+{', '.join(hosted[name])})" if hosted.get(name) else "") for pid, name in pids.items()}


# ---------------------------------------------------------------------------- shared inputs
def build_score_models(root: Path, seed: int) -> tuple[str, str]:
    """Untrained SmolLM2 reward and cost score models (random heads, seeded)."""
    import torch

    from rayrlhf.models import load_tokenizer, resolve_model_path
    from rayrlhf.models.score_model import ScoreModel

    policy = resolve_model_path("smollm2-135m-instruct")
    tokenizer = load_tokenizer(policy)
    dirs = []
    for offset, kind in enumerate(("reward", "cost")):
        torch.manual_seed(seed + offset)
        out = root / f"{kind}_model"
        ScoreModel.from_pretrained(policy, kind=kind, dtype="float32").save_pretrained(out, tokenizer)
        dirs.append(str(out))
    return dirs[0], dirs[1]


# The issue's best-settings pair for TRL's lora_bf16: TRL's adapters (rank 16, alpha 32, every
# projection), bf16 where the start-up matmul timing finds it native (dtype auto; fp32
# elsewhere), and passes of 16 rows: bf16 makes the matrix products fast enough that
# per-operation overhead (LoRA's many small ones) dominates 4-row passes, and LoRA's roles
# have memory to spare.
LORA_BF16 = ["ppo.lora.enabled=true", "ppo.lora.rank=16", "ppo.lora.alpha=32", "policy.dtype=auto", "ppo.bf16=null",
             "ppo.micro_batch_size=16"]
# What each rayrlhf variant changes on top of the base overrides (fp32, one mini-batch of all prompts).
VARIANTS: dict[str, list[str]] = {
    # The shipped defaults: engine log-probs (auto), one critic backbone with two heads, frozen
    # models in the trainers' processes, length-sorted micro-batches of 4, no checkpointing.
    "default": [],
    # The same with Safe RLHF's two critics.
    "separate_critics": ["ppo.critic_layout=separate"],
    # The layout of main before issue 13: old log-probs recomputed, two critics, the frozen models
    # in one actor of their own, 16-row micro-batches (padding computed), gradient checkpointing.
    "before": ["ppo.logprobs_source=recompute", "ppo.critic_layout=separate", "resources.frozen_placement=one_actor",
               "ppo.micro_batch_size=16", "ppo.gradient_checkpointing=true"],
    # The fastest documented settings here: bf16 where the CPU runs it natively (dtype auto:
    # measured), and only the top 8 of 30 layers trained on the policy and the critic.
    "best": ["policy.dtype=auto", "ppo.bf16=null", "ppo.trainable_layers=8"],
    # The default with LoRA on the policy and the critic (TRL's lora_bf16 adapters: rank 16,
    # alpha 32, every projection): adapters-only optimisers, no base-weight gradients, and the
    # reference is the policy with its adapters off (no reference copy in policy-0).
    "lora": ["ppo.lora.enabled=true", "ppo.lora.rank=16", "ppo.lora.alpha=32"],
    "lora_bf16": LORA_BF16,
    # The same with the vLLM engine compiled (rollout.enforce_eager=false): decoding ~35% faster
    # on CPU, for ~2 min more start-up (torch.compile; cached across runs): pays on long runs.
    "lora_bf16_compiled": [*LORA_BF16, "rollout.enforce_eager=false"],
    # The default, one step off-policy: the engine generates the next step's responses while
    # the roles train (rollout.async_generation).
    "async": ["rollout.async_generation=true"],
}
# --lora: full fine-tuning and LoRA side by side (step time, peak RSS per role).
LORA_VARIANTS = "default,lora"


def rayrlhf_overrides(variant: str, args, reward_dir: str, cost_dir: str, steps: int) -> list[str]:
    # Async starts the next step's generation only while there is a next step: one step more
    # than are run, so the last measured step overlaps like the others (the first async run,
    # results/ppo_lag_step_async_cpu.json, measured its last step without it: read step 2).
    steps += 1 if variant == "async" else 0
    return [
        f"reward={reward_dir}", f"cost={cost_dir}", "rollout.engine=vllm",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.max_new_tokens={args.new_tokens}",
        "ppo.epochs=1", f"ppo.minibatch_size={args.prompts}", "ppo.bf16=false", "policy.dtype=float32",
        f"steps={steps}", "save_every=0", "logger=[jsonl]", f"run.seed={args.seed}",
        *VARIANTS[variant], *args.override,
    ]


# ---------------------------------------------------------------------------- FLOPs from shapes
def model_shape(path: str) -> dict[str, int]:
    """The matrix shapes of a Llama-style checkpoint (config.json)."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or d // heads
    return {"hidden": d, "layers": cfg["num_hidden_layers"], "q_dim": heads * head_dim,
            "kv_dim": cfg.get("num_key_value_heads", heads) * head_dim, "ffn": cfg["intermediate_size"],
            "vocab": cfg["vocab_size"]}


def forward_flops(shape: dict[str, int], lengths: list[int], head_tokens: int, layers_share: float = 1.0) -> float:
    """FLOPs of one forward pass over sequences of ``lengths`` tokens: 2 per multiply-add of
    every linear layer per token, causal attention (QK^T and AV over L^2/2 pairs), and the LM
    head on ``head_tokens`` tokens; ``layers_share`` of the decoder layers only."""
    d, q, kv, ff = shape["hidden"], shape["q_dim"], shape["kv_dim"], shape["ffn"]
    per_token_layer = 2 * (d * q + 2 * d * kv + q * d + 3 * d * ff)
    tokens = sum(lengths)
    attention = sum(2 * q * length * length for length in lengths)  # 2 products x 2 FLOPs x L^2/2 pairs
    return layers_share * shape["layers"] * (per_token_layer * tokens + attention) + 2 * d * shape["vocab"] * head_tokens


def rayrlhf_flops(shape: dict[str, int], cfg, prompt_lengths: list[int], response_length: float,
                  recomputed_rows: float) -> dict[str, float]:
    """FLOPs per phase of one rayrlhf step on real tokens (micro-batches drop the padding; what
    is left inside a micro-batch is not counted). ``recomputed_rows``: rows whose old log-probs
    the policy computed this step (all, or a check's few)."""
    rows = len(prompt_lengths)
    lengths = [p + response_length for p in prompt_lengths]
    responses = rows * response_length
    lm = forward_flops(shape, lengths, responses)  # a policy/reference forward, head on the responses
    body = forward_flops(shape, lengths, 0)  # a critic or judge forward (1-output head: ~0)
    critics = 1 if cfg.ppo.critic_layout == "shared" else 2
    layers = cfg.ppo.trainable_layers
    share = 1.0 if layers is None else min(1.0, layers / shape["layers"])
    head = 2 * shape["hidden"] * shape["vocab"] * responses
    recompute = 1 if cfg.ppo.gradient_checkpointing else 0
    # Backward: 2x the forward of the trained part (input and weight gradients); with frozen
    # lower layers it stops at the lowest trained layer, and the tied (frozen) LM head needs its
    # input gradient only. LoRA: input gradients only (1x; the adapters' own are ~0).
    grads = 1 if cfg.ppo.lora.enabled else 2
    policy_backward = grads * (lm - head) * share + (2 if share == 1.0 and grads == 2 else 1) * head
    critic_backward = grads * body * share
    return {
        "generate": lm,
        "score": lm * (1 + recomputed_rows / rows) + body * (critics + 2),
        "train": lm * (1 + recompute) + policy_backward + critics * (body * (1 + recompute) + critic_backward),
    }


def trl_flops(shape: dict[str, int], prompt_lengths: list[int], response_width: int, lora: bool) -> dict[str, float]:
    """FLOPs per phase of one TRL PPOTrainer step: it computes every padded position (queries
    left-padded to the longest, responses to ``response_width``), the LM head over all of them
    in the reference and training forwards; with LoRA the backward computes input gradients
    through every layer but no base-weight gradients (about one forward)."""
    rows = len(prompt_lengths)
    width = max(prompt_lengths) + response_width
    padded = [width] * rows
    generate = forward_flops(shape, [p + response_width for p in prompt_lengths], rows * response_width)
    lm_all = forward_flops(shape, padded, rows * width)
    body = forward_flops(shape, padded, 0)
    policy_backward = lm_all if lora else 2 * lm_all
    return {"generate": generate, "score": lm_all + 2 * body, "train": lm_all + policy_backward + 3 * body}


def step_prompt_ids(driver, num_prompts: int, steps: int, seed: int) -> list[list[int]]:
    """The formatted, tokenised prompts the driver uses in steps 0..steps-1, in order."""
    from rayrlhf.trainers.ppo_lag import prompt_order

    return [driver.prompt_ids[i] for step in range(steps)
            for i in prompt_order(len(driver.prompts), num_prompts, step, seed)]


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarise_steps(history: list[dict[str, float]]) -> dict[str, Any]:
    """Medians over the measured steps of the driver's timing/* metrics."""
    step_s = [m["timing/step_s"] for m in history]
    phases = {name: round(median([m.get(f"timing/{name}_s", 0.0) for m in history]), 4) for name in PHASES}
    return {
        "median_step_s": round(median(step_s), 3),
        "step_s": [round(s, 3) for s in step_s],
        "phases_s": phases,
        "tokens_per_s": round(median([m["timing/generate_tokens_per_s"] for m in history]), 1),
        "sync_share": round(median([m["timing/sync_s"] / m["timing/step_s"] for m in history]), 4),
        # The engines' reload of the synced weights; the rest of the sync phase is the policy's
        # merge, cast and transfer.
        "sync_load_s": round(median([m.get("rollout/sync_load_s", float("nan")) for m in history]), 4),
        "overhead_share": round(median([m["timing/overhead_s"] / m["timing/step_s"] for m in history]), 4),
        "mean_response_len": round(statistics.fmean(m["rollout/response_length"] for m in history), 2),
        "finished_share": round(statistics.fmean(m["rollout/finished"] for m in history), 3),
        "logprob_gap_engine_vs_policy": median([m["rollout/logprob_gap"] for m in history]),
        "logprobs_from_engine": all(m.get("rollout/logprobs_from_engine") == 1.0 for m in history),
        "actor_loss": [round(m["actor/loss"], 5) for m in history],
        "critic_reward_loss": [round(m["critic/reward_loss"], 5) for m in history],
    }


# ---------------------------------------------------------------------------- rayrlhf
def timed_generate_phase(driver, index: list[int], max_new_tokens: int, seed: int) -> tuple[float, int]:
    """``PPOLagDriver.generate`` itself (Ray fan-out, engines, batch packing) on the prompts
    ``index``, with the step's sampling but ``max_new_tokens`` and ``seed``: (seconds, response tokens)."""
    import dataclasses

    spec = dataclasses.replace(driver.sampling_spec(), max_new_tokens=max_new_tokens, seed=seed)
    start = time.perf_counter()
    rollout = driver.generate(index, spec)
    seconds = time.perf_counter() - start
    return seconds, int(rollout.batch.response_mask.sum())


def phase_flops(driver, history: list[dict[str, float]], args, first_step: int) -> dict[str, float]:
    """Median per-phase FLOPs of the measured steps (``history`` starts at step ``first_step``)."""
    from rayrlhf.trainers.ppo_lag import prompt_order

    shape = model_shape(driver.policy_path)
    per_step = []
    for offset, metrics in enumerate(history):
        index = prompt_order(len(driver.prompts), args.prompts, first_step + offset, args.seed)
        prompt_lengths = [len(driver.prompt_ids[i]) for i in index]
        if metrics.get("rollout/logprobs_from_engine", 0.0) == 1.0:
            recomputed = min(driver.cfg.ppo.logprob_check_rows, args.prompts) * metrics["rollout/logprob_gap_measured"]
        else:
            recomputed = args.prompts
        per_step.append(rayrlhf_flops(shape, driver.cfg, prompt_lengths, metrics["rollout/response_length"], recomputed))
    return {phase: median([f[phase] for f in per_step]) for phase in per_step[0]}


def flops_report(flops: dict[str, float], seconds: dict[str, float], peak_gflops: float) -> dict[str, Any]:
    """GFLOPs per phase and the achieved FLOP/s as a share of the machine's matmul peak."""
    return {"gflops": {k: round(v / 1e9, 1) for k, v in flops.items()},
            "gflops_per_step": round(sum(flops.values()) / 1e9, 1),
            "share_of_peak": {k: round(v / 1e9 / max(seconds.get(k, 0.0), 1e-9) / peak_gflops, 3) for k, v in flops.items()},
            "peak_gflops": round(peak_gflops, 1)}


def run_rayrlhf(variant: str, args, reward_dir: str, cost_dir: str, work: Path,
                shared: dict[str, Any], machine: dict[str, Any], first: bool) -> dict[str, Any]:
    """Build the driver on a private Ray cluster, 1 warm-up + N measured steps (+ the gap run
    and the throughput comparison for the first variant), then tear down."""
    import ray

    from rayrlhf.cluster import init_ray, required_cpus
    from rayrlhf.config import compose_config
    from rayrlhf.trainers.ppo_lag import PPOLagDriver

    gap_steps = args.gap_steps if first else 0
    overrides = rayrlhf_overrides(variant, args, reward_dir, cost_dir, max(1 + args.steps, gap_steps))
    cfg = compose_config("ppo_lag", overrides, output_dir=str(work / f"rayrlhf_{variant}"))
    load_start, speed = os.getloadavg()[0], matmul_now()
    start = time.perf_counter()
    init_ray(cfg.cluster, required_cpus=required_cpus(cfg))
    driver = None
    try:
        driver = PPOLagDriver(cfg)
        startup_s = time.perf_counter() - start
        log.info("[%s] driver ready in %.1f s", variant, startup_s)
        if "prompt_ids" not in shared:
            shared["prompt_ids"] = step_prompt_ids(driver, args.prompts, 1 + args.steps, args.seed)
        warm = driver.step()
        log.info("[%s] warm-up step %.1f s", variant, warm["timing/step_s"])
        history = []
        with RssSampler(args.rss_interval, actor_pids(driver)) as rss:
            for _ in range(args.steps):
                metrics = driver.step()
                history.append(metrics)
                log.info("[%s] step %d: %.1f s %s", variant, metrics["step"], metrics["timing/step_s"],
                         {k[7:]: round(v, 2) for k, v in metrics.items() if k.startswith("timing/")})
        summary = summarise_steps(history)
        dtype = driver.roles.policy_dtype
        per_core = machine["matmul"]["bf16_gflops_per_core" if dtype == "bfloat16" else "fp32_gflops_per_core"]
        result = {
            "overrides": VARIANTS[variant],
            **summary,
            "flops": flops_report(phase_flops(driver, history, args, 1), summary["phases_s"],
                                  per_core * machine["physical_cores"]),
            "compute_dtype": {"policy": dtype, "engine": driver.roles.engine_dtype},
            "peak_rss_gib": round(rss.peak_workers / GIB, 3),
            "peak_rss_all_ray_processes_gib": round(rss.peak_tree / GIB, 3),
            "peak_rss_by_role_gib": {k: round(v / GIB, 3) for k, v in sorted(rss.peak_by_role.items())},
            "processes": rss.peak_processes,
            "warmup_step_s": round(warm["timing/step_s"], 3),
            "startup_s": round(startup_s, 1),
            "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "matmul_at_start": speed,
        }
        if gap_steps:
            result["logprob_gap_run"] = logprob_gap_run(driver, [warm, *history], gap_steps)
        if first and args.throughput:
            result["throughput_in_system"] = measure_in_system_throughput(driver, args, shared)
        return result
    finally:
        if driver is not None:
            driver.shutdown()
        ray.shutdown()


def logprob_gap_run(driver, history: list[dict[str, float]], steps: int) -> dict[str, Any]:
    """Run on to ``steps`` steps checking the engine's log-probs against the policy at every
    step; the gap (mean |Δ log p| per token) of every measured step against its tolerance."""
    driver.old_logprobs.check_every = 1
    while driver.step_index < steps:
        metrics = driver.step()
        history.append(metrics)
        log.info("[gap] step %d: gap %.2e, %.1f s", metrics["step"], metrics["rollout/logprob_gap"],
                 metrics["timing/step_s"])
    measured = [m for m in history if m.get("rollout/logprob_gap_measured") == 1.0]
    gaps = [m["rollout/logprob_gap"] for m in measured]
    tolerance = history[-1]["rollout/logprob_gap_tolerance"]
    return {"steps": len(history), "measured_steps": [int(m["step"]) for m in measured],
            "gap_per_measured_step": [float(f"{g:.3g}") for g in gaps], "max_gap": max(gaps), "tolerance": tolerance,
            "below_tolerance": bool(max(gaps) < tolerance),
            "engine_logprobs_every_step": all(m["rollout/logprobs_from_engine"] == 1.0 for m in history),
            "check_rows": driver.cfg.ppo.logprob_check_rows}


def measure_in_system_throughput(driver, args, shared: dict[str, Any]) -> dict[str, Any]:
    import ray

    from rayrlhf.trainers.ppo_lag import prompt_order

    engine_info = ray.get(driver.roles.rollout_workers[0].ready.remote())
    index = prompt_order(len(driver.prompts), args.tp_prompts, 1000, args.seed)
    shared["tp_prompt_ids"] = [driver.prompt_ids[i] for i in index]  # the same prompts for plain vLLM
    shared["tp_engine"] = {"max_model_len": driver.cfg.rollout.max_model_len,
                           "kv_cache_gib": driver.cfg.rollout.kv_cache_gib,
                           "temperature": driver.cfg.rollout.temperature, "top_p": driver.cfg.rollout.top_p,
                           "policy_path": driver.policy_path,
                           "threads": engine_info["threads"], "dtype": engine_info["dtype"]}
    runs = []
    for repeat in range(args.tp_repeats):
        seconds, tokens = timed_generate_phase(driver, index, args.tp_new_tokens, args.seed + repeat)
        log.info("[vllm] in-system generate %dx%d: %.1f s, %d tokens", len(index), args.tp_new_tokens,
                 seconds, tokens)
        runs.append({"seconds": round(seconds, 3), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)})
    return {"runs": runs, "tokens_per_s": median([r["tokens_per_s"] for r in runs])}


# ---------------------------------------------------------------------------- standalone vLLM
STANDALONE_VLLM = r'''
import json, os, sys, time
spec = json.load(open(sys.argv[1]))
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
import torch
torch.set_num_threads(spec["threads"])
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
llm = LLM(model=spec["model"], dtype=spec["dtype"], max_model_len=spec["max_model_len"], enforce_eager=True,
          seed=spec["seed"], logprobs_mode="raw_logprobs", kv_cache_memory_bytes=int(spec["kv_cache_gib"] * 2**30))
prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompt_ids"]]
def run(seed, max_tokens, n):
    params = []
    for i in range(n):
        p = SamplingParams(max_tokens=max_tokens, temperature=spec["temperature"], top_p=spec["top_p"],
                           logprobs=0, skip_special_tokens=True, seed=seed + i)
        params.append(p)
    start = time.perf_counter()
    outs = llm.generate(prompts[:n], params, use_tqdm=False)
    return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outs)
run(0, 2, 1)  # warm-up, as VLLMEngine does
runs = []
for r in range(spec["repeats"]):
    s, t = run(spec["seed"] + r, spec["max_new_tokens"], len(prompts))
    runs.append({"seconds": round(s, 3), "tokens": t, "tokens_per_s": round(t / s, 1)})
    print(f"standalone vLLM {len(prompts)}x{spec['max_new_tokens']}: {s:.1f} s {t} tokens", file=sys.stderr)
print(json.dumps({"runs": runs}))
'''


def run_standalone_vllm(args, shared: dict[str, Any], work: Path) -> dict[str, Any]:
    """Plain vllm.LLM in a subprocess: same model, dtype, sampling, per-prompt seeds and torch
    threads as the driver's rollout worker (read from the worker itself)."""
    engine = shared["tp_engine"]
    dtype = args.vllm_dtype or engine["dtype"]
    spec = {"model": engine["policy_path"], "dtype": dtype, "max_model_len": engine["max_model_len"],
            "kv_cache_gib": engine["kv_cache_gib"], "temperature": engine["temperature"], "top_p": engine["top_p"],
            "seed": args.seed, "threads": engine["threads"], "prompt_ids": shared["tp_prompt_ids"],
            "max_new_tokens": args.tp_new_tokens, "repeats": args.tp_repeats}
    spec_file = work / "standalone_vllm.json"
    spec_file.write_text(json.dumps(spec))
    script = work / "standalone_vllm.py"
    script.write_text(STANDALONE_VLLM)
    # The rollout worker sets OMP_NUM_THREADS to its thread count; the standalone run gets the same.
    env = {**os.environ, "OMP_NUM_THREADS": str(engine["threads"])}
    proc = subprocess.run([sys.executable, str(script), str(spec_file)], capture_output=True, text=True,
                          env=env, timeout=args.tp_timeout)
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
    runs = json.loads(proc.stdout.strip().splitlines()[-1])["runs"]
    return {"runs": runs, "tokens_per_s": median([r["tokens_per_s"] for r in runs]), "dtype": dtype,
            "threads": engine["threads"]}


# ---------------------------------------------------------------------------- peer: TRL
PEER_SCRIPT = r'''
"""TRL 1.12 PPOTrainer at the benchmark's batch shape; prints one JSON line."""
import json, os, resource, sys, threading, time, statistics
spec = json.load(open(sys.argv[1]))
import torch
torch.set_num_threads(spec["threads"])
import psutil, transformers, trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
import trl.experimental.ppo.ppo_trainer as ppo_module
from trl.experimental.ppo import PPOConfig, PPOTrainer

tok = AutoTokenizer.from_pretrained(spec["policy"], padding_side="left")
# SmolLM2's pad token is its EOS <|im_end|>, which TRL would mask inside the chat-formatted
# prompts (TRL builds attention masks as ids != pad); <|endoftext|> never occurs in them.
tok.pad_token = "<|endoftext|>"
f32 = torch.float32
policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=f32)
# With a peft_config TRL's reference is the policy with its adapters off (ref_model=None).
ref = None if spec["lora"] else AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=f32)
reward = AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1, dtype=f32)
value = AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1, dtype=f32)
for m in (policy, ref, reward, value):
    if m is not None:
        m.config.pad_token_id = tok.pad_token_id
policy.generation_config.pad_token_id = tok.pad_token_id
dataset = Dataset.from_dict({"input_ids": spec["prompt_ids"]})

gen_seconds = []
original = ppo_module.batch_generation
def timed_batch_generation(*a, **k):
    start = time.perf_counter()
    out = original(*a, **k)
    gen_seconds.append(time.perf_counter() - start)
    return out
ppo_module.batch_generation = timed_batch_generation

marks = []
class StepClock(TrainerCallback):
    def on_train_begin(self, args, state, control, **kw):
        marks.append(time.perf_counter())
    def on_step_end(self, args, state, control, **kw):
        marks.append(time.perf_counter())

class Rss:
    def __init__(self):
        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss); self.stop.wait(0.5)
rss = Rss()
class RssOnMeasured(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == spec["warmup"] and not rss.thread.is_alive():
            rss.thread.start()

n = spec["prompts"]
config = PPOConfig(
    output_dir=spec["output_dir"], per_device_train_batch_size=n, gradient_accumulation_steps=1,
    num_mini_batches=1, num_ppo_epochs=1, local_rollout_forward_batch_size=n,
    total_episodes=n * (spec["warmup"] + spec["steps"]), response_length=spec["new_tokens"],
    stop_token="eos", temperature=1.0, gradient_checkpointing=False, num_sample_generations=0, bf16=spec["bf16"], fp16=False, use_cpu=True,
    report_to=[], save_strategy="no", logging_steps=1, seed=spec["seed"], learning_rate=1e-5,
    kl_coef=0.02, gamma=1.0, lam=0.95, cliprange=0.2, disable_tqdm=True, dataloader_num_workers=0,
)
peft_config = None
if spec["lora"]:
    from peft import LoraConfig
    peft_config = LoraConfig(task_type="CAUSAL_LM", **spec["lora"])
trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                     value_model=value, train_dataset=dataset, callbacks=[StepClock(), RssOnMeasured()],
                     peft_config=peft_config)
trainer.train()
rss.stop.set()
steps = [b - a for a, b in zip(marks, marks[1:])]
measured = steps[spec["warmup"]:]
logs = [h for h in trainer.state.log_history if "val/num_eos_tokens" in h]
print(json.dumps({
    "median_step_s": round(statistics.median(measured), 3), "step_s": [round(s, 3) for s in steps],
    "warmup_step_s": round(steps[0], 3) if spec["warmup"] else None,
    "generate_s": round(statistics.median(gen_seconds[spec["warmup"]:]), 3),
    "tokens_per_s_upper_bound": round(n * spec["new_tokens"] / statistics.median(gen_seconds[spec["warmup"]:]), 1),
    "peak_rss_gib": round(max(rss.peak, psutil.Process().memory_info().rss) / 1024**3, 3),
    "peak_rss_whole_run_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
    "num_eos_tokens_per_step": [h["val/num_eos_tokens"] for h in logs],
    "threads": spec["threads"], "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                                             "torch": torch.__version__},
    "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    "lora": spec["lora"], "bf16": spec["bf16"],
}))
'''


def ensure_peer_venv(venv: Path) -> Path:
    """``python3.11 -m venv`` + TRL 1.12 and friends, once; never touches the project venv."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import trl.experimental.ppo, psutil, peft, sys; assert trl.__version__.startswith('1.12')"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    log.info("creating the TRL venv at %s (pip install %s)", venv, " ".join(TRL_PIP))
    if not python.exists():
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True, stdout=sys.stderr)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_PIP], check=True, stdout=sys.stderr)
    subprocess.run(probe, check=True)
    return python


# What each TRL variant changes: fp32 full fine-tuning (the issue's "default settings" peer), and
# LoRA on the policy (TRL's peft_config; its value model still trains whole) with bf16 autocast.
PEER_VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"lora": None, "bf16": False},
    "lora_bf16": {"lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                           "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"]},
                  "bf16": True},
}


def run_peer(variant: str, args, shared: dict[str, Any], reward_dir: str, work: Path) -> dict[str, Any]:
    from rayrlhf.models import resolve_model_path

    try:
        python = ensure_peer_venv(Path(args.peer_venv))
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON instead of failing the run
        return {"error": f"could not prepare the TRL venv at {args.peer_venv}: {exc}"}
    spec = {"policy": resolve_model_path("smollm2-135m-instruct"), "reward": reward_dir,
            "prompt_ids": shared["prompt_ids"], "prompts": args.prompts, "new_tokens": args.new_tokens,
            "warmup": 1, "steps": args.steps, "seed": args.seed, "threads": args.peer_threads,
            "output_dir": str(work / f"trl_out_{variant}"), **PEER_VARIANTS[variant]}
    spec_file = work / f"peer_spec_{variant}.json"
    spec_file.write_text(json.dumps(spec))
    script = work / "peer_trl_ppo.py"
    script.write_text(PEER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": str(args.peer_threads),
                "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    load_start, speed = os.getloadavg()[0], matmul_now()
    try:
        proc = subprocess.run([str(python), str(script), str(spec_file)], capture_output=True, text=True,
                              env=env, timeout=args.peer_timeout, cwd=str(work))
    except subprocess.TimeoutExpired:
        return {"error": f"TRL run exceeded {args.peer_timeout} s"}
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode != 0:
        return {"error": f"TRL exited {proc.returncode}: {proc.stderr[-2000:]}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_avg_1m"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    result["matmul_at_start"] = speed
    shape = model_shape(spec["policy"])
    flops = trl_flops(shape, [len(p) for p in shared["prompt_ids"][:args.prompts]], args.new_tokens,
                      lora=spec["lora"] is not None)
    per_core = shared["machine"]["matmul"]["bf16_gflops_per_core" if spec["bf16"] else "fp32_gflops_per_core"]
    peak = per_core * shared["machine"]["physical_cores"]
    result["flops"] = {"gflops": {k: round(v / 1e9, 1) for k, v in flops.items()},
                       "gflops_per_step": round(sum(flops.values()) / 1e9, 1),
                       "share_of_peak": {"generate": round(flops["generate"] / 1e9 / result["generate_s"] / peak, 3),
                                         "score+train": round((flops["score"] + flops["train"]) / 1e9
                                                              / (result["median_step_s"] - result["generate_s"]) / peak, 3)},
                       "peak_gflops": round(peak, 1)}
    return result


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="measured steps after 1 warm-up step")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma list of rayrlhf variants to run (of {', '.join(VARIANTS)}); the first is the one "
                        "speedup_vs_trl compares, the gap run and the throughput use")
    p.add_argument("--peer-variants", default=",".join(PEER_VARIANTS), help="comma list of TRL variants")
    p.add_argument("--lora", action="store_true",
                   help=f"full fine-tuning against LoRA: --variants {LORA_VARIANTS} (unless given), TRL's fp32 "
                        "and lora_bf16 (its peft_config); the report's lora_vs_full compares them")
    p.add_argument("--gap-steps", type=int, default=0,
                   help="run the first variant on to this many steps, checking the engine's log-probs every step")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--override", action="append", default=[], help="extra Hydra override for rayrlhf (repeatable)")
    p.add_argument("--rss-interval", type=float, default=0.5)
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip TRL")
    p.add_argument("--peer-venv", default="/tmp/rayrlhf-trl-venv")
    p.add_argument("--peer-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--peer-timeout", type=int, default=1200)
    p.add_argument("--throughput", action="store_true",
                   help="also compare in-system vLLM rollout throughput with a standalone vllm.LLM")
    p.add_argument("--tp-prompts", type=int, default=64)
    p.add_argument("--tp-new-tokens", type=int, default=128)
    p.add_argument("--tp-repeats", type=int, default=2)
    p.add_argument("--tp-timeout", type=int, default=1200)
    p.add_argument("--vllm-dtype", default=None,
                   help="standalone vLLM dtype (default: the dtype of the driver's own vLLM engine)")
    p.add_argument("--attempts", type=int, default=2,
                   help="tries per engine when Ray's OOM killer stops a run (shared machines)")
    p.add_argument("--retry-wait", type=float, default=30.0)
    p.add_argument("--output", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.lora and "--variants" not in (argv if argv is not None else sys.argv[1:]):
        args.variants = LORA_VARIANTS
    return args


def json_stdout():
    """A file on the real stdout; fd 1 then points at stderr, so that Ray's forwarded worker
    logs, vLLM's logger and every subprocess print to stderr and stdout carries only the JSON."""
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return real


def main(argv: list[str] | None = None) -> dict[str, Any]:
    out = json_stdout()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the driver only packs batches; leave the cores to the workers
    wall_start = time.perf_counter()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    peers = [v.strip() for v in args.peer_variants.split(",") if v.strip()] if args.peer else []
    report: dict[str, Any] = {
        "benchmark": "ppo_lag_step", "machine": machine_info(),
        "config": {"model": "smollm2-135m-instruct", "prompts": args.prompts, "new_tokens": args.new_tokens,
                   "ppo_epochs": 1, "minibatch_size": args.prompts, "engine": "vllm",
                   "dtype": "float32 unless the variant says otherwise (torch, judges and the vLLM engine, "
                            "which follow policy.dtype)", "warmup_steps": 1, "measured_steps": args.steps,
                   "reward_cost": "untrained SmolLM2 score models (critics initialised from them)",
                   "rayrlhf_variants": {v: rayrlhf_overrides(v, args, "<reward_dir>", "<cost_dir>", 1 + args.steps)
                                        for v in variants},
                   "peer_variants": {v: PEER_VARIANTS[v] for v in peers}, "peer_threads": args.peer_threads},
        "work": {
            "rayrlhf": "generate (vLLM); no-grad forwards: reference, critic(s) (one backbone with reward and "
                       "cost heads, or two critics), reward model, cost model, and the policy only where old "
                       "log-probs are recomputed (or on a few rows every N steps to check the engine's); train: "
                       "policy and critic(s) (one optimiser each); weight sync to the engine",
            "trl": "generate (HF, logprobs from generation scores); no-grad forwards: reference, value, reward "
                   "model; train: policy+value in one backward (1 optimiser); no cost model, no cost critic",
        },
        "flops_how": "counted from SmolLM2's shapes and the step's token counts: 2 FLOPs per multiply-add of "
                     "every linear layer, causal attention, the LM head where logits are computed; backward = "
                     "2x the forward of the trained part. rayrlhf on real tokens, TRL on its padded batch. "
                     "share_of_peak = achieved FLOP/s / (physical cores x measured one-thread matmul GFLOP/s "
                     "in the compute dtype).",
    }
    with tempfile.TemporaryDirectory(prefix="rayrlhf-bench-") as tmp:
        work = Path(tmp)
        reward_dir, cost_dir = build_score_models(work, args.seed)
        shared: dict[str, Any] = {"machine": report["machine"]}
        report["rayrlhf"] = {}
        for position, variant in enumerate(variants):
            for attempt in range(1, args.attempts + 1):
                try:
                    result = run_rayrlhf(variant, args, reward_dir, cost_dir, work, shared, report["machine"],
                                         first=position == 0)
                    report["rayrlhf"][variant] = {**result, "attempt": attempt}
                    break
                except Exception as exc:  # noqa: BLE001 - keep the other measurements
                    log.exception("rayrlhf %s failed (attempt %d)", variant, attempt)
                    report["rayrlhf"][variant] = {"error": repr(exc)[:2000], "attempts": attempt}
                    # Only Ray's OOM killer is worth a retry: other jobs on a shared machine
                    # may have held the memory for a while.
                    if type(exc).__name__ != "OutOfMemoryError":
                        break
                    time.sleep(args.retry_wait)
        first = report["rayrlhf"].get(variants[0], {}) if variants else {}
        if args.throughput and "tp_prompt_ids" in shared:
            standalone = run_standalone_vllm(args, shared, work)
            inside = first.pop("throughput_in_system")
            report["throughput"] = {"prompts": args.tp_prompts, "new_tokens": args.tp_new_tokens,
                                    "in_system": inside, "standalone_vllm": standalone}
            if "tokens_per_s" in standalone:
                report["throughput_ratio_vs_standalone"] = round(inside["tokens_per_s"] / standalone["tokens_per_s"], 3)
        report["peer_trl"] = {}
        for variant in peers:
            report["peer_trl"][variant] = (run_peer(variant, args, shared, reward_dir, work) if "prompt_ids" in shared
                                           else {"error": "no rayrlhf run produced the shared prompts"})
    report["comparisons"] = compare(report)
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_s"] = round(time.perf_counter() - wall_start, 1)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    out.write(text + "\n")
    out.flush()
    return report


# (rayrlhf variant, TRL variant) pairs the issue's targets compare.
COMPARISONS = {"speedup_vs_trl": ("default", "fp32"), "speedup_vs_trl_separate_critics": ("separate_critics", "fp32"),
               "speedup_vs_trl_before": ("before", "fp32"), "speedup_vs_trl_best": ("best", "lora_bf16"),
               "speedup_vs_trl_lora": ("lora", "lora_bf16"), "speedup_vs_trl_lora_bf16": ("lora_bf16", "lora_bf16"),
               "speedup_vs_trl_lora_bf16_compiled": ("lora_bf16_compiled", "lora_bf16")}


def compare(report: dict[str, Any]) -> dict[str, Any]:
    """TRL median step / rayrlhf median step, and peak RSS side by side, per compared pair."""
    out = {}
    for name, (ours_name, peer_name) in COMPARISONS.items():
        ours, peer = report["rayrlhf"].get(ours_name, {}), report["peer_trl"].get(peer_name, {})
        if "median_step_s" in ours and "median_step_s" in peer:
            out[name] = {"rayrlhf": ours_name, "trl": peer_name,
                         "speedup": round(peer["median_step_s"] / ours["median_step_s"], 3),
                         "rayrlhf_step_s": ours["median_step_s"], "trl_step_s": peer["median_step_s"],
                         "rayrlhf_peak_rss_gib": ours["peak_rss_gib"], "trl_peak_rss_gib": peer["peak_rss_gib"],
                         "rayrlhf_gflops_per_step": ours["flops"]["gflops_per_step"],
                         "trl_gflops_per_step": peer["flops"]["gflops_per_step"],
                         # The machine's speed before each side ran: a ratio means little if it moved.
                         "matmul_at_start": {"rayrlhf": ours.get("matmul_at_start"), "trl": peer.get("matmul_at_start")}}
    full, lora = report["rayrlhf"].get("default", {}), report["rayrlhf"].get("lora", {})
    if "median_step_s" in full and "median_step_s" in lora:
        out["lora_vs_full"] = lora_vs_full(full, lora)
    return out


def lora_vs_full(full: dict[str, Any], lora: dict[str, Any]) -> dict[str, Any]:
    """Step time and peak RSS (all Ray workers, and per role) of full fine-tuning and LoRA."""
    roles = sorted(set(full["peak_rss_by_role_gib"]) | set(lora["peak_rss_by_role_gib"]))
    return {"step_s": {"full": full["median_step_s"], "lora": lora["median_step_s"]},
            "phases_s": {"full": full["phases_s"], "lora": lora["phases_s"]},
            "peak_rss_gib": {"full": full["peak_rss_gib"], "lora": lora["peak_rss_gib"]},
            "peak_rss_by_role_gib": {role: {"full": full["peak_rss_by_role_gib"].get(role),
                                            "lora": lora["peak_rss_by_role_gib"].get(role)} for role in roles}}


if __name__ == "__main__":
    main()
