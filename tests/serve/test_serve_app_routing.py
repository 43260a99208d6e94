"""The deployment's routing and error handling, called directly (no Ray cluster needed)."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from starlette.requests import Request

from rayrlhf.models.score_model import METADATA_FILE
from rayrlhf.serve.app import (
    ScoreService,
    ServiceSettings,
    build_app,
    checked_model_dir,
    route_of,
    service_url,
    split_rows,
)
from rayrlhf.serve.validation import RequestError


def bare_service():
    """The deployment's class with no judges loaded (its __init__ would load models)."""
    service = object.__new__(ScoreService.func_or_class)
    service.judges, service.settings, service.body_limit = {}, ServiceSettings(), 10_000
    return service


def request(method: str, path: str, root_path: str = "") -> Request:
    return Request({"type": "http", "method": method, "path": root_path + path,
                    "root_path": root_path, "headers": [], "query_string": b""})


def call(service, req: Request) -> tuple[int, dict]:
    response = asyncio.run(service(req))
    return response.status_code, json.loads(response.body)


@pytest.mark.parametrize(("path", "root", "route"), [
    ("/v1/cost", "/v1", "/cost"), ("/cost/", "", "/cost"), ("/", "", "/"), ("/v1", "/v1", "/"),
])
def test_route_is_the_path_below_the_prefix(path, root, route):
    assert route_of({"path": path, "root_path": root}) == route


def test_split_rows_gives_each_request_its_own_rows():
    scores = torch.arange(6.0).reshape(6, 1)
    parts = split_rows(scores, [1, 3, 2])
    assert [p[:, 0].tolist() for p in parts] == [[0.0], [1.0, 2.0, 3.0], [4.0, 5.0]]


def test_service_url_joins_the_prefix():
    assert service_url("127.0.0.1", 8000, "/") == "http://127.0.0.1:8000"
    assert service_url("127.0.0.1", 8000, "judges/") == "http://127.0.0.1:8000/judges"


@pytest.mark.parametrize(("method", "path", "status", "says"), [
    ("POST", "/reward", 404, "no reward model is loaded"),
    ("POST", "/score", 404, "no route '/score'"),
    ("GET", "/cost", 405, "use POST /cost"),
    ("POST", "/healthz", 405, "use GET /healthz"),
])
def test_client_errors_answer_json(method, path, status, says):
    code, body = call(bare_service(), request(method, path, root_path="/v1"))
    assert code == status and says in body["error"]


def test_healthz_reports_absent_judges():
    code, body = call(bare_service(), request("GET", "/healthz"))
    assert code == 200 and body == {"status": "ok", "models": {}, "absent": ["reward", "cost", "moderation"]}


def test_an_unexpected_failure_is_a_500_and_the_handler_survives():
    service = bare_service()

    async def broken(req, route):
        raise RuntimeError("a bug")

    service.handle = broken
    code, body = call(service, request("POST", "/cost"))
    assert code == 500 and "RuntimeError" in body["error"]


def test_request_errors_raised_deep_inside_keep_their_status():
    service = bare_service()

    async def too_big(req, route):
        raise RequestError(413, "too big")

    service.handle = too_big
    assert call(service, request("POST", "/cost")) == (413, {"error": "too big"})


def test_model_folders_are_checked_before_serving(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checked_model_dir(tmp_path / "missing", "cost")
    with pytest.raises(ValueError, match="not a trained rayrlhf score model"):
        checked_model_dir(tmp_path, "cost")
    (tmp_path / METADATA_FILE).write_text(json.dumps({"kind": "reward", "labels": ["reward"]}))
    with pytest.raises(ValueError, match="holds a reward model, not a cost model"):
        checked_model_dir(tmp_path, "cost")
    assert checked_model_dir(tmp_path, "reward") == str(tmp_path.resolve())


def test_build_app_needs_a_judge_and_a_valid_threshold(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        build_app()
    (tmp_path / METADATA_FILE).write_text(json.dumps({"kind": "cost", "labels": ["cost"]}))
    with pytest.raises(ValueError, match="threshold"):
        build_app(cost_dir=tmp_path, moderation_threshold=1.0)
