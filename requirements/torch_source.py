"""Where pip finds the pinned CPU build of torch; prints the pip options that reach it.

    python requirements/torch_source.py            (run by `make venv`)
    TORCH_INDEX=<index URL or wheel folder> python requirements/torch_source.py

The lock pins ``torch==2.13.0+cpu``, a build PyPI does not carry (PyPI's ``torch==2.13.0`` is
the CUDA build, several GB). In order, the first that has it wins:

1. ``TORCH_INDEX``, when set: an index URL (``--extra-index-url``) or a folder of wheels
   (``--find-links``);
2. what pip is configured with already (``pip config``, ``PIP_FIND_LINKS``, ``PIP_INDEX_URL``);
3. the PyTorch CPU index, https://download.pytorch.org/whl/cpu.

Each is asked with ``pip install --dry-run --no-deps`` (an index answer, or a wheel's metadata;
nothing is installed). Prints the options on stdout ('' for 2.), or one line on stderr saying
which index to set, and exits 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PINNED = "torch==2.13.0+cpu"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def options_for(source: str) -> list[str]:
    """pip options that add ``source``: a folder of wheels or an index URL."""
    return ["--find-links", source] if Path(source).is_dir() else ["--extra-index-url", source]


def reachable(options: list[str], python: str = sys.executable) -> bool:
    """True when pip, with ``options``, finds the pinned build (nothing is installed)."""
    command = [python, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--retries", "1", "--timeout", "20", *options, PINNED]
    return subprocess.run(command, capture_output=True, text=True).returncode == 0


def torch_options(environ: dict[str, str] | None = None, python: str = sys.executable) -> list[str]:
    """The pip options to install the pinned torch with; SystemExit(1) with the one line that
    says what to set when no source has it."""
    environ = dict(os.environ if environ is None else environ)
    given = environ.get("TORCH_INDEX", "").strip()
    if given:
        if reachable(options_for(given), python):
            return options_for(given)
        sys.exit(f"make: {PINNED} is not in TORCH_INDEX={given}; set TORCH_INDEX to an index URL or a folder "
                 f"holding its wheel (the PyTorch CPU index is {CPU_INDEX})")
    if reachable([], python):
        return []
    if reachable(options_for(CPU_INDEX), python):
        return options_for(CPU_INDEX)
    sys.exit(f"make: {PINNED} is not reachable from pip's indexes nor {CPU_INDEX}; set TORCH_INDEX to an index "
             "URL or a folder holding its wheel, e.g. `make test TORCH_INDEX=/path/to/wheels`")


if __name__ == "__main__":
    print(" ".join(torch_options()))
