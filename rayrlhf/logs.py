"""Quiet by default: stage headers, progress bars and results, not the libraries' chatter.

A default run used to print hundreds of lines nobody acts on: Ray Train's placement-group
cleaner warning once a second that the State API (which needs the dashboard, off on a private
cluster) cannot be reached, Ray Train reporting every ``report`` call, transformers' load
report for the score head it is told to create, DeepSpeed's accelerator detection and
deprecation warnings, from every worker. Each is turned down where it is emitted: logger levels
in the driver (``configure``) and in every Ray worker process (``quiet_worker``, a Ray
``worker_process_setup_hook``), the libraries' own verbosity variables (``QUIET_ENV``), and
Ray Train's ``RunConfig(logging_config=...)`` (``ray_train_log_level``).

``run.log_level=DEBUG`` or ``run.verbose=true`` brings everything back.

Nothing here imports the rest of rayrlhf (a basics module: the cluster start-up and the
trainers read it).
"""

from __future__ import annotations

import logging
import os
import warnings

# logger -> the level it gets in quiet mode, with the reason.
NOISY_LOGGERS: dict[str, int] = {
    # Polls the State API each second; without a dashboard every poll warns "Failed to query
    # Ray Train Controller actor state" (247 lines in a default run's first 5 minutes).
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    # "Failed to send resource request" with a traceback, each time an overloaded CPU delays
    # the autoscaling coordinator (Ray itself calls it safe to ignore when transient).
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client": logging.ERROR,
    # Resource requests, worker-group start-up, "Reporting training result N" per report.
    "ray.train": logging.WARNING,
    "ray.tune": logging.WARNING,
    "ray.data": logging.WARNING,
    "ray.serve": logging.WARNING,
    # Load reports list the new score head as MISSING: expected for a model we create.
    "transformers": logging.ERROR,
    # "Setting accelerator to CPU", ZeRO set-up banners from every rank.
    "DeepSpeed": logging.ERROR,
    "deepspeed": logging.ERROR,
    "torch.distributed": logging.ERROR,
    # Engine start-up advice on CPUs (no Triton, no tcmalloc in LD_PRELOAD, eager mode, thread
    # binding), 17 lines per engine start; real errors still show.
    "vllm": logging.ERROR,
    "datasets": logging.WARNING,
    "filelock": logging.WARNING,
    "httpx": logging.WARNING,
    "urllib3": logging.WARNING,
    "matplotlib": logging.WARNING,
    "PIL": logging.WARNING,
    "wandb": logging.WARNING,
    "mlflow": logging.WARNING,
    "alembic": logging.WARNING,
    "git": logging.WARNING,
}

# Loggers named by their file path (``logging.getLogger(__file__)``), as module -> level: Ray
# Train's worker context logs every report call ("Reporting training result N") there.
NOISY_FILE_LOGGERS: dict[str, int] = {"ray/train/v2/_internal/execution/context.py": logging.WARNING}

# The libraries' own verbosity switches, read when they are imported (set for the driver and
# passed to every Ray worker). A value the user exported wins.
QUIET_ENV: dict[str, str] = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "VLLM_CONFIGURE_LOGGING": "1",
    "TOKENIZERS_PARALLELISM": "false",  # the fork warning, once per worker
    "WANDB_SILENT": "true",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

# Warnings aimed at library developers (deprecations inside DeepSpeed and torch.distributed,
# generation-config advice from transformers), by the module that issues them.
QUIET_WARNINGS_FROM = r"(torch|deepspeed|transformers|vllm|ray|datasets)(\.|$)"
# Set by ``configure`` for this process and passed to Ray workers, which read it too.
VERBOSE_ENV = "RAYRLHF_VERBOSE"


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def configure(level: str = "INFO", verbose: bool = False) -> None:
    """Set this process's logging for a stage: rayrlhf at ``level``; the libraries quiet
    unless ``verbose`` or ``level`` is DEBUG. Ray workers started after this follow it
    (``worker_runtime_env``)."""
    verbose = verbose or level.upper() == "DEBUG"
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    logging.getLogger("rayrlhf").setLevel(level.upper())
    if verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    quiet_loggers()


class AtLeast(logging.Filter):
    """Drops records below a level. DeepSpeed resets its logger's level when it is imported
    (after a worker's setup hook ran); a filter on the logger stays."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def quiet_loggers() -> None:
    for name, level in NOISY_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(f, AtLeast) for f in logger.filters):
            logger.addFilter(AtLeast(level))
    ray_root = _package_dir("ray")
    for relative, level in NOISY_FILE_LOGGERS.items():
        if ray_root is not None:
            logging.getLogger(os.path.join(os.path.dirname(ray_root), relative)).setLevel(level)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=QUIET_WARNINGS_FROM)


def _package_dir(name: str) -> str | None:
    """Where an installed package lives, without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    return spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None


def quiet_worker() -> None:
    """Ray ``worker_process_setup_hook``: runs first in every worker process of a quiet run."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    quiet_loggers()


def worker_runtime_env() -> dict:
    """What the run adds to the Ray runtime_env of its workers: whether it is verbose, and when
    it is not, the setup hook and the libraries' verbosity variables."""
    if is_verbose():
        return {"env_vars": {VERBOSE_ENV: "1"}}
    env_vars = {name: os.environ.get(name, value) for name, value in QUIET_ENV.items()}
    return {"worker_process_setup_hook": f"{__name__}.quiet_worker", "env_vars": {**env_vars, VERBOSE_ENV: "0"}}


def ray_train_log_level() -> str:
    """Ray Train's own console level for its controller and workers."""
    return "INFO" if is_verbose() else "WARNING"


def progress_interval_s() -> float:
    """Seconds between progress-bar refreshes inside Ray workers: their output reaches the
    driver line by line (no carriage returns), so a bar refreshed 10 times a second floods it."""
    return 0.1 if is_verbose() else 10.0
