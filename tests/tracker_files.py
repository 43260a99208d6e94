"""Read back what the W&B and MLflow loggers wrote, from their files, as a person's tools would.

W&B (offline mode) writes ``wandb/offline-run-*/run-<id>.wandb``: a ``:W&B`` header, then
records in LevelDB's log format (32 KiB blocks; each chunk a 7-byte header: CRC32C, length,
type FULL/FIRST/MIDDLE/LAST) holding protobuf ``Record`` messages. The reader here follows
that format on its own (wandb 0.31 ships no Python reader); ``wandb.proto`` parses the records.
MLflow's file store is read through ``MlflowClient``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version
CHUNK = struct.Struct("<IHB")  # crc32c, length, type
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    ident, magic, _ = HEADER.unpack_from(data, 0)
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    records, pending, offset = [], b"", HEADER.size
    while offset + CHUNK.size <= len(data):
        room = BLOCK - offset % BLOCK
        if room < CHUNK.size:  # a block's tail too short for a header is padding
            offset += room
            continue
        _, length, kind = CHUNK.unpack_from(data, offset)
        if kind == 0 and length == 0:  # zero padding at the end of a block
            offset += room
            continue
        body = data[offset + CHUNK.size: offset + CHUNK.size + length]
        offset += CHUNK.size + length
        if kind == FULL:
            records.append(body)
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            records.append(pending + body)
            pending = b""
    return records


def read_wandb_offline(run_dir: Path) -> dict[str, Any]:
    """{"name", "group", "config" (flat keys -> values), "history" (step -> {key: value})} of
    the one offline run below ``run_dir`` (the ``dir`` given to ``wandb.init``)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = list(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    out: dict[str, Any] = {"name": None, "group": None, "config": {}, "history": {}}
    for raw in wandb_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["group"] = record.run.display_name, record.run.run_group
            out["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            out["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            step = record.history.step.num if record.history.HasField("step") else row.get("_step")
            out["history"][int(step)] = row
    return out


def read_mlflow(tracking_uri: str, experiment: str = "rayrlhf") -> dict[str, dict[str, Any]]:
    """run name -> {"params", "tags", "metrics": {key: [(step, value), ...]}} of an experiment."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {tracking_uri}"
    runs = {}
    for run in client.search_runs([found.experiment_id]):
        metrics = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
                   for key in run.data.metrics}
        runs[run.info.run_name] = {"params": run.data.params, "tags": run.data.tags, "metrics": metrics,
                                   "status": run.info.status}
    return runs
