"""How much a run's console log says: lines in total, progress-bar lines, the rest, and the
known noise, as JSON.

    rayrlhf pipeline +profile=smoke > smoke.log 2>&1
    python benchmarks/log_lines.py smoke.log

A progress-bar line is a tqdm refresh (``37%|███▋ | 7/19 [00:01<00:02, 4.1it/s]``); Ray
workers' bars reach the driver one refresh per line. ``other`` is what a person reads.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

PROGRESS = re.compile(r"\d+%\|.*\| *\d+/\d+ \[|\d+it \[\d")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
NOISE = {  # what issue #16 counted, and what each stands for
    "failed_to_query": "Failed to query Ray Train Controller actor state",
    "load_report": "LOAD REPORT",
    "deepspeed_warning": "[WARNING] [",
    "future_warning": "FutureWarning",
    "train_report": "Reporting training result",
}


def count(lines: list[str]) -> dict:
    clean = [ANSI.sub("", line.rstrip("\n")) for line in lines]
    progress = [line for line in clean if PROGRESS.search(line)]
    other = [line for line in clean if not PROGRESS.search(line)]
    shapes = collections.Counter(re.sub(r"\d+", "N", re.sub(r"pid=\d+", "pid=N", line))[:120] for line in other)
    return {"total": len(clean), "progress_bar": len(progress), "other": len(other),
            **{name: sum(text in line for line in clean) for name, text in NOISE.items()},
            "most_repeated": [[n, shape] for shape, n in shapes.most_common(5) if n > 2]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    args = parser.parse_args(argv)
    # Lines as a terminal or `wc -l` counts them: a tqdm refresh inside a line (\r) is not a line.
    lines = args.log.read_bytes().decode("utf-8", errors="replace").rstrip("\n").split("\n")
    print(json.dumps({"log": str(args.log), **count(lines)}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
