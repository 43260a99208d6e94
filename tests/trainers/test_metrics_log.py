"""The per-step loggers for real: metrics.jsonl, TensorBoard event files, a W&B offline run and
an MLflow file store, each read back with its own reader."""

from __future__ import annotations

import json

import pytest

from rayrlhf.config import compose_config, to_object
from rayrlhf.trainers.metrics_log import MetricsLog, flatten, tracking_settings, wandb_mode
from tracker_files import read_mlflow, read_wandb_offline

ROWS = [{"step": 1, "train/loss": 0.9, "train/lr": 1e-4},
        {"step": 2, "train/loss": 0.7, "train/lr": 2e-4, "eval/accuracy": 0.6,
         "eval/per_category_f1/controversial_topics,politics": 0.25},
        {"step": 3, "train/loss": 0.5, "train/lr": 1e-4}]


def test_flatten_joins_nested_keys_with_dots():
    assert flatten({"ppo": {"kl_coef": 0.02, "clip": {"ratio": 0.2}}, "logger": ["jsonl"]}) == {
        "ppo.kl_coef": 0.02, "ppo.clip.ratio": 0.2, "logger": ["jsonl"]}


def test_wandb_mode_never_asks_for_a_key(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) == "disabled" and wandb_mode("offline") == "offline"


def test_settings_name_the_run_after_its_folder_below_the_runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYRLHF_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "train-reward" / "2026-01-01_10-00-00"
    cfg = to_object(compose_config("train_reward", ["logger=[jsonl,mlflow]"], output_dir=str(out)))
    settings = tracking_settings(cfg, out)
    assert settings["run_name"] == "train-reward/2026-01-01_10-00-00"
    assert settings["mlflow_tracking_uri"] == (tmp_path / "mlruns").as_uri()
    assert settings["loggers"] == ["jsonl", "mlflow"] and settings["config"]["kind"] == "reward"
    json.dumps(settings)  # plain data: it travels in a Ray Train loop config


def test_every_logger_holds_every_step(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    settings = {"out": str(tmp_path), "loggers": ["jsonl", "tensorboard", "wandb", "mlflow"],
                "run_name": "unit/run", "group": "unit", "project": "rayrlhf", "wandb_mode": "offline",
                "mlflow_tracking_uri": (tmp_path / "mlruns").as_uri(),
                "config": {"training": {"lr": 1e-4, "epochs": 2}, "kind": "reward"}}
    log = MetricsLog(settings)
    for row in ROWS:
        log.log(row)
    log.close()

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == ROWS

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")] == [(1, 0.9), (2, 0.7), (3, 0.5)]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [2]

    wandb_run = read_wandb_offline(tmp_path)
    assert (wandb_run["name"], wandb_run["group"]) == ("unit/run", "unit")
    assert wandb_run["config"]["training"] == {"lr": 1e-4, "epochs": 2}
    assert {step: row["train/loss"] for step, row in wandb_run["history"].items()} == {1: 0.9, 2: 0.7, 3: 0.5}
    assert wandb_run["history"][2]["eval/accuracy"] == 0.6

    (mlflow_run,) = read_mlflow(settings["mlflow_tracking_uri"]).values()
    assert mlflow_run["metrics"]["train/loss"] == [(1, 0.9), (2, 0.7), (3, 0.5)]
    assert mlflow_run["metrics"]["eval/accuracy"] == [(2, 0.6)]
    # MLflow refuses commas in names; harm-category metrics carry them.
    assert mlflow_run["metrics"]["eval/per_category_f1/controversial_topics_politics"] == [(2, 0.25)]
    assert mlflow_run["params"]["training.lr"] == "0.0001" and mlflow_run["params"]["kind"] == "reward"
    assert mlflow_run["tags"]["rayrlhf.group"] == "unit" and mlflow_run["status"] == "FINISHED"


def test_unknown_logger_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown \\['comet'\\]"):
        MetricsLog({"out": str(tmp_path), "loggers": ["jsonl", "comet"]})


def test_the_config_must_keep_jsonl():
    from rayrlhf.config.validate import ConfigValueError, validate_config

    with pytest.raises(ConfigValueError, match="must include jsonl"):
        validate_config(compose_config("ppo_lag", ["+experiment=synthetic", "logger=[wandb]"], output_dir="/tmp/x"))
    with pytest.raises(ConfigValueError, match="unknown \\['neptune'\\]"):
        validate_config(compose_config("train_sft", ["logger=[jsonl,neptune]"], output_dir="/tmp/x"))
