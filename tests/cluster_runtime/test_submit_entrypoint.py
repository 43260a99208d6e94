"""``rayrlhf submit`` without a cluster: the entrypoint, the runtime_env, argument parsing and
the wait loop (against a scripted fake client)."""

from __future__ import annotations

import io
import shlex

import pytest

from rayrlhf import paths
from rayrlhf.submit import (
    SubmitError, build_entrypoint, build_runtime_env, local_paths_left_behind, parse_args, passed_env,
    read_runtime_env, submit, wait,
)


def test_entrypoint_joins_the_job_cluster_and_quotes_overrides():
    overrides = ["+experiment=synthetic", "steps=2", "prompts.source=/data/my prompts.jsonl"]
    entrypoint = build_entrypoint("ppo-lag", overrides)
    assert shlex.split(entrypoint) == ["python", "-m", "rayrlhf.cli", "ppo-lag", "cluster=existing", *overrides]


def test_an_explicit_cluster_choice_is_kept_not_doubled():
    entrypoint = build_entrypoint("ppo-lag", ["cluster=client", "+experiment=synthetic"])
    assert shlex.split(entrypoint)[3:] == ["ppo-lag", "cluster=client", "+experiment=synthetic"]


def test_stages_without_ray_get_no_cluster_override():
    # data-check has no `cluster` group: adding one would not even compose.
    assert build_entrypoint("data-check", ["dataset=demo_preferences"]) == (
        "python -m rayrlhf.cli data-check dataset=demo_preferences")


@pytest.mark.parametrize("stage, overrides, words", [
    ("ppo-lagg", [], "unknown stage 'ppo-lagg'"),
    ("ppo-lag", ["+experiment=synthetic", "steps=two"], "Integer"),
    ("ppo-lag", ["+experiment=synthetic", "rollout.no_such_key=1"], "no_such_key"),
    ("ppo-lag", ["--cfg", "job"], "not other Hydra flags"),
    # Values are checked too, every trial of a sweep, and one line says which and why.
    ("ppo-lag", ["+experiment=synthetic", "ppo.actor_lr=-1"], "ppo.actor_lr=-1.0: must be > 0"),
    ("ppo-lag", ["--multirun", "+experiment=synthetic", "steps=2,0"], "trial 1 .*steps=0: must be >= 1"),
    ("ppo-lag", ["steps=2"], "reward='\\?\\?\\?': mandatory"),
    ("ppo-lag", ["+experiment=synthetic", "rollout.num_engins=2"], "did you mean 'rollout.num_engines'"),
])
def test_bad_submissions_fail_before_any_network(stage, overrides, words):
    class NoClient:  # any use of the cluster would be a bug
        def submit_job(self, **_):
            raise AssertionError("submitted despite invalid overrides")

    with pytest.raises(SubmitError, match=words):
        submit(stage, overrides, client=NoClient())


def test_runtime_env_uploads_the_code_and_passes_no_local_paths():
    environ = {"RAYRLHF_RUNS_DIR": "/home/me/runs", "RAYRLHF_CACHE_DIR": "/home/me/.cache", "RAY_AUTH_MODE": "token",
               "RAY_AUTH_TOKEN": "secret", "HOME": "/root"}
    env = build_runtime_env("/repo", environ=environ)
    assert env["working_dir"] == "/repo"
    assert {"/.venv/", "/runs/", "/.git/", "/outputs/"} <= set(env["excludes"])
    assert env["env_vars"] == {"RAY_AUTH_MODE": "token"}  # the laptop's folders mean nothing there
    assert "pip" not in env
    assert passed_env({"PATH": "/bin"}) == {}
    assert local_paths_left_behind(environ) == ["RAYRLHF_CACHE_DIR", "RAYRLHF_RUNS_DIR"]
    # The cluster's runs folder is said explicitly.
    env = build_runtime_env("/repo", environ=environ, runs_dir="/shared/runs")
    assert env["env_vars"] == {"RAY_AUTH_MODE": "token", "RAYRLHF_RUNS_DIR": "/shared/runs"}


def test_a_user_runtime_env_adds_to_the_jobs(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("env_vars:\n  HF_HOME: /shared/hf\nexcludes: [/data/]\nconda: ml\n")
    extra = read_runtime_env(str(path), '{"env_vars": {"OMP_NUM_THREADS": "2"}}')
    assert extra == {"env_vars": {"HF_HOME": "/shared/hf", "OMP_NUM_THREADS": "2"}, "excludes": ["/data/"],
                     "conda": "ml"}
    env = build_runtime_env("/repo", environ={}, runs_dir="/shared/runs", extra=extra)
    assert env["env_vars"] == {"RAYRLHF_RUNS_DIR": "/shared/runs", "HF_HOME": "/shared/hf", "OMP_NUM_THREADS": "2"}
    assert "/data/" in env["excludes"] and "/.venv/" in env["excludes"] and env["conda"] == "ml"
    with pytest.raises(SubmitError, match="both say what to install"):
        build_runtime_env("/repo", pip_lock=True, environ={}, extra={"pip": ["x"]})
    with pytest.raises(SubmitError, match="a runtime_env is a mapping"):
        read_runtime_env(None, "[1, 2]")


def test_a_sweep_runs_as_one_job_of_parallel_trials():
    entrypoint = build_entrypoint("ppo-lag", ["--multirun", "+experiment=synthetic", "lagrange.threshold=-0.1,0.1"],
                                  max_parallel=2)
    assert shlex.split(entrypoint) == ["python", "-m", "rayrlhf.cli", "sweep", "--max-parallel", "2", "--", "ppo-lag",
                                       "cluster=existing", "+experiment=synthetic", "lagrange.threshold=-0.1,0.1"]
    with pytest.raises(SubmitError, match="is relative"):
        submit("ppo-lag", ["--multirun", "+experiment=synthetic", "steps=2,3"], runs_dir="runs",
               client=object())


def test_pip_lock_installs_the_pinned_stack():
    env = build_runtime_env("/repo", pip_lock=True, environ={})
    packages = env["pip"]["packages"]
    lock = (paths.REPO_ROOT / "requirements" / "cpu.lock").read_text()
    assert packages and all("==" in p or "@" in p for p in packages)
    assert all(p in lock for p in packages)
    assert any(p.startswith("ray==") for p in packages) and any(p.startswith("torch==") for p in packages)
    assert "--no-deps" in env["pip"]["pip_install_options"]  # like `make venv`: pins, no resolution


def test_submit_sends_entrypoint_runtime_env_and_metadata():
    sent = {}

    class FakeClient:
        def submit_job(self, **kwargs):
            sent.update(kwargs)
            return "raysubmit_123"

    job_id = submit("ppo-lag", ["+experiment=synthetic"], client=FakeClient(), working_dir="/w",
                    metadata={"owner": "me"})
    assert job_id == "raysubmit_123"
    assert sent["entrypoint"] == "python -m rayrlhf.cli ppo-lag cluster=existing +experiment=synthetic"
    assert sent["runtime_env"]["working_dir"] == "/w"
    assert sent["metadata"] == {"rayrlhf_stage": "ppo-lag", "owner": "me"}


def test_parse_args_splits_options_from_the_stage_command():
    args = parse_args(["--address", "http://head:8265", "--no-wait", "--metadata", "a=b=c",
                       "--", "ppo-lag", "steps=1"])
    assert (args.address, args.no_wait, args.pip_lock) == ("http://head:8265", True, False)
    assert (args.stage, args.overrides, args.metadata) == ("ppo-lag", ["steps=1"], {"a": "b=c"})
    with pytest.raises(SubmitError, match="no stage"):
        parse_args(["--address", "http://head:8265"])


class ScriptedClient:
    """Statuses and growing logs, one entry per poll."""

    def __init__(self, statuses: list[str], logs: list[str]) -> None:
        self.statuses, self.logs, self.polls = statuses, logs, 0

    def get_job_status(self, job_id: str) -> str:
        self.polls += 1
        return self.statuses[min(self.polls, len(self.statuses)) - 1]

    def get_job_logs(self, job_id: str) -> str:
        return self.logs[min(self.polls, len(self.logs)) - 1]


def test_wait_prints_each_log_line_once_and_returns_the_terminal_status():
    client = ScriptedClient(["PENDING", "RUNNING", "RUNNING", "FAILED"], ["", "a\n", "a\nb\n", "a\nb\nboom\n"])
    out = io.StringIO()
    assert wait(client, "j", poll_s=0, out=out) == "FAILED"
    assert out.getvalue() == "a\nb\nboom\n"
    assert client.polls == 4


def test_wait_gives_up_after_the_timeout():
    client = ScriptedClient(["RUNNING"], ["x"])
    assert wait(client, "j", timeout=0.05, poll_s=0.01, out=io.StringIO()) == "TIMEOUT"
