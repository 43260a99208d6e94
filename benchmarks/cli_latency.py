"""How long ``rayrlhf <stage> --help``, ``--cfg job`` and a misspelled key take, per stage, as JSON.

    python benchmarks/cli_latency.py [--repeats 5] [--stages ppo-lag,serve]

Each command runs as a fresh process (what a user waits for, interpreter start included), with
the ``rayrlhf`` console script beside this Python when there is one. Reported per stage and
command: the fastest and the median wall-clock seconds of ``--repeats`` runs (the fastest is
the machine's own speed; the median shows what other load on it adds), and whether the
command answered as it should (exit 0, or 2 with "did you mean" for the typo). The target
(issue #16): at most 1 s each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rayrlhf.stages import STAGES

TARGET_S = 1.0
COMMANDS = {"help": ["--help"], "cfg_job": ["--cfg", "job"], "typo": ["no_such_kye=1"]}


def launcher() -> list[str]:
    script = Path(sys.executable).with_name("rayrlhf")
    return [str(script)] if script.is_file() and not os.environ.get("PYTHONPATH") else \
        [sys.executable, "-m", "rayrlhf.cli"]


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return time.perf_counter() - start, proc


def answered(command: str, proc: subprocess.CompletedProcess) -> bool:
    if command == "typo":
        return proc.returncode == 2 and "unknown key 'no_such_kye'" in proc.stderr
    return proc.returncode == 0 and bool(proc.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stages", default=",".join(STAGES))
    args = parser.parse_args(argv)
    base = launcher()
    results: dict[str, dict] = {}
    for stage in args.stages.split(","):
        results[stage] = {}
        for name, extra in COMMANDS.items():
            runs = [timed([*base, stage, *extra]) for _ in range(args.repeats)]
            seconds = sorted(s for s, _ in runs)
            results[stage][name] = {"min_s": round(seconds[0], 3), "median_s": round(statistics.median(seconds), 3),
                                    "ok": all(answered(name, proc) for _, proc in runs)}
    worst = max(r["min_s"] for per_stage in results.values() for r in per_stage.values())
    print(json.dumps({"launcher": " ".join(base if base[0] != sys.executable else ["python", *base[1:]]),
                      "repeats": args.repeats, "target_s": TARGET_S, "worst_min_s": worst,
                      "all_within_target": worst <= TARGET_S, "cpus": os.cpu_count(),
                      "load_average": [round(x, 2) for x in os.getloadavg()], "stages": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
