"""Where a PPO-Lag run's per-step metrics go: metrics.jsonl, TensorBoard and the progress bar."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """metrics.jsonl (always), TensorBoard (optional) and a console progress bar."""

    def __init__(self, out: Path, total: int, initial: int, tensorboard: bool) -> None:
        from tqdm.auto import tqdm

        self.path = out / "metrics.jsonl"
        self.file = open(self.path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))
        self.bar = tqdm(total=total, initial=initial, desc="ppo-lag")

    def log(self, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "step":
                    self.writer.add_scalar(key, value, metrics["step"])
        self.bar.update(1)
        self.bar.set_postfix({name: f"{metrics[key]:.3f}" for name, key in
                              (("reward", "reward/mean"), ("cost", "cost/mean"), ("λ", "lagrange/lambda"))
                              if key in metrics})

    def rewind(self, step: int) -> list[dict]:
        """Forget the rows after ``step`` (a restart recomputes them from a checkpoint); the
        dropped rows are returned so the caller can keep them in the fault log."""
        self.file.close()
        rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept, dropped = [r for r in rows if r["step"] <= step], [r for r in rows if r["step"] > step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(self.path)
        self.file = open(self.path, "a", encoding="utf-8")
        self.bar.n = step
        self.bar.refresh()
        return dropped

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        self.bar.close()
