"""``rayrlhf submit`` without a cluster: the entrypoint, the runtime_env, argument parsing and
the wait loop (against a scripted fake client)."""

from __future__ import annotations

import io
import shlex

import pytest

from rayrlhf import paths
from rayrlhf.submit import (
    SubmitError, build_entrypoint, build_runtime_env, parse_args, passed_env, submit, wait,
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
    ("ppo-lag", ["--multirun", "steps=1,2"], "not Hydra flags"),
])
def test_bad_submissions_fail_before_any_network(stage, overrides, words):
    class NoClient:  # any use of the cluster would be a bug
        def submit_job(self, **_):
            raise AssertionError("submitted despite invalid overrides")

    with pytest.raises(SubmitError, match=words):
        submit(stage, overrides, client=NoClient())


def test_runtime_env_uploads_the_code_and_passes_only_rayrlhf_and_auth_mode():
    environ = {"RAYRLHF_RUNS_DIR": "/shared/runs", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "secret",
               "HOME": "/root"}
    env = build_runtime_env("/repo", environ=environ)
    assert env["working_dir"] == "/repo"
    assert {"/.venv/", "/runs/", "/.git/", "/outputs/"} <= set(env["excludes"])
    assert env["env_vars"] == {"RAYRLHF_RUNS_DIR": "/shared/runs", "RAY_AUTH_MODE": "token"}
    assert "pip" not in env
    assert passed_env({"PATH": "/bin"}) == {}


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
