"""Where a run's per-step metrics go: ``metrics.jsonl`` and the trackers people already use.

Every trainer (SFT, the score models, PPO-Lag) logs each step's metrics through one
:class:`MetricsLog`, from one process (the PPO-Lag driver; rank 0 of a Ray Train run), to the
loggers its config lists in ``logger``:

- ``jsonl``: ``<run>/metrics.jsonl``, one JSON object per step (the run's own record:
  ``sweep-report`` and the pipeline report read it, so it is required);
- ``tensorboard``: ``<run>/tensorboard/`` (``tensorboard --logdir runs``);
- ``wandb``: a Weights & Biases run named after the run folder, with the resolved config;
  ``tracking.wandb_mode`` (or ``WANDB_MODE``) ``offline`` writes ``<run>/wandb/`` for ``wandb sync``;
- ``mlflow``: an MLflow run in ``tracking.mlflow_tracking_uri`` (``MLFLOW_TRACKING_URI``; by
  default a file store at ``<runs dir>/mlruns``: ``mlflow ui --backend-store-uri <it>``), with the
  config as params.

Steps only go forward in W&B: after a worker restart the recomputed steps replace theirs in
``metrics.jsonl`` (``rewind``), W&B keeps the first values, MLflow keeps both.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

from rayrlhf.config.schema import LOGGERS

log = logging.getLogger(__name__)

# MLflow caps a param value at 6000 characters (older servers: 500); longer ones are cut.
MLFLOW_PARAM_CHARS = 500
# MLflow metric names take alphanumerics, _ - . space : and / only; harm categories hold commas.
_MLFLOW_UNSAFE = re.compile(r"[^\w\-. :/]", re.ASCII)


def mlflow_metric_name(key: str) -> str:
    """``eval/per_category_f1/controversial_topics,politics`` -> ``..._topics_politics``."""
    return _MLFLOW_UNSAFE.sub("_", key)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"ppo": {"kl_coef": 0.02}}`` -> ``{"ppo.kl_coef": 0.02}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def tracking_settings(cfg, out: Path) -> dict[str, Any]:
    """What the loggers of run ``out`` need, resolved in the driver (Ray Train workers run in
    other folders and processes): plain data, so it travels in a Ray Train loop config."""
    from omegaconf import OmegaConf

    tracking = cfg.tracking
    runs_root = Path(os.environ.get("RAYRLHF_RUNS_DIR", "runs")).resolve()
    out = out.resolve()
    try:
        default_name = str(out.relative_to(runs_root))
    except ValueError:
        default_name = out.name
    uri = tracking.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or str(runs_root / "mlruns")
    if "://" not in uri and not uri.startswith("file:"):
        uri = Path(uri).resolve().as_uri()  # a plain folder: MLflow's file store
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True) if not isinstance(cfg, dict) else cfg
    return {"loggers": list(cfg.logger), "out": str(out), "run_name": tracking.run_name or default_name,
            "group": tracking.group, "project": tracking.project, "wandb_mode": wandb_mode(tracking.wandb_mode),
            "mlflow_tracking_uri": uri, "config": container}


def wandb_mode(configured: str | None) -> str:
    """The configured mode; else ``WANDB_MODE``; else online with an API key, offline without
    (a job never stops to ask for a key)."""
    if configured:
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


# ------------------------------------------------------------------------------ sinks
class JsonlSink:
    def __init__(self, out: Path) -> None:
        self.path = out / "metrics.jsonl"
        self.file = open(self.path, "a", encoding="utf-8")

    def log(self, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()

    def rewind(self, step: int) -> list[dict]:
        self.file.close()
        rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept, dropped = [r for r in rows if r["step"] <= step], [r for r in rows if r["step"] > step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(self.path)
        self.file = open(self.path, "a", encoding="utf-8")
        return dropped

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    def __init__(self, out: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"))

    def log(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key != "step":
                self.writer.add_scalar(key, value, metrics["step"])

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, settings: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project=settings["project"], name=settings["run_name"], group=settings["group"],
                              config=settings["config"], dir=settings["out"], mode=settings["wandb_mode"],
                              reinit="create_new")

    def log(self, metrics: dict[str, float]) -> None:
        self.run.log({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    def __init__(self, settings: dict[str, Any]) -> None:
        uri = settings["mlflow_tracking_uri"]
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store in maintenance mode behind this switch; it is the
            # store that needs no server and no database.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(settings["project"])
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(settings["project"]))
        tags = {"rayrlhf.run_folder": settings["out"], **({"rayrlhf.group": settings["group"]}
                                                          if settings["group"] else {})}
        self.run_id = self.client.create_run(experiment_id, run_name=settings["run_name"], tags=tags).info.run_id
        from mlflow.entities import Param

        params = [Param(key, str(value)[:MLFLOW_PARAM_CHARS]) for key, value in flatten(settings["config"]).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        step, now = int(metrics["step"]), _now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_metric_name(key), float(value), now, step)
                                                    for key, value in metrics.items() if key != "step"])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


class MetricsLog:
    """A run's per-step metrics into each configured logger, and optionally a progress bar.

    ``settings`` is ``tracking_settings(...)``; the bar (``progress``: its label) shows reward,
    cost and λ where a step has them.
    """

    def __init__(self, settings: dict[str, Any], *, total: int | None = None, initial: int = 0,
                 progress: str | None = None) -> None:
        out = Path(settings["out"])
        loggers = settings["loggers"]
        unknown = [name for name in loggers if name not in LOGGERS]
        if unknown:
            raise ValueError(f"logger: unknown {unknown}; choose from {', '.join(LOGGERS)}")
        self.jsonl = JsonlSink(out)
        self.sinks: list[Any] = [self.jsonl]
        if "tensorboard" in loggers:
            self.sinks.append(TensorBoardSink(out))
        if "wandb" in loggers:
            self.sinks.append(WandbSink(settings))
        if "mlflow" in loggers:
            self.sinks.append(MlflowSink(settings))
        self.bar = None
        if progress is not None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=progress)

    @property
    def path(self) -> Path:
        return self.jsonl.path

    def log(self, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log(metrics)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({name: f"{metrics[key]:.3f}" for name, key in
                                  (("reward", "reward/mean"), ("cost", "cost/mean"), ("λ", "lagrange/lambda"))
                                  if key in metrics})

    def rewind(self, step: int) -> list[dict]:
        """Forget the rows after ``step`` (a restart recomputes them from a checkpoint); the
        dropped rows are returned so the caller can keep them in the fault log."""
        dropped = self.jsonl.rewind(step)
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()
        return dropped

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - a tracker failing to finish must not lose the run
                log.warning("closing %s failed: %s", type(sink).__name__, exc)
        if self.bar is not None:
            self.bar.close()


def read_metrics_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` ([] when the file is absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
