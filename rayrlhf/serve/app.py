"""Ray Serve endpoints that score (prompt, response) pairs with the trained judges.

One deployment, :class:`ScoreService`, holds up to three score models and answers

- ``POST <prefix>/reward``      ``{"scores": [...]}`` (higher = more helpful)
- ``POST <prefix>/cost``        ``{"scores": [...], "unsafe": [...]}`` (cost > 0 means unsafe)
- ``POST <prefix>/moderation``  ``{"flagged": [...], "probabilities": [{category: p}], "threshold": t}``
- ``GET  <prefix>/healthz``     the loaded models and batching counters

with a body ``{"items": [{"prompt": ..., "response": ...}, ...]}`` or one such object.
Concurrent requests for the same judge are merged by ``@serve.batch`` into one
``score_conversations`` call (one padded forward pass per 16 texts instead of one per
request) and the scores are split back per request. Bad requests get a 4xx JSON
``{"error": ...}`` from :mod:`rayrlhf.serve.validation`; nothing a client sends can take the
replica down, and an unexpected failure answers 500 without killing it either. A merged batch
that fails is scored again request by request, so one bad request fails alone.

Bounded: bodies stop being read at the size a valid request can have; at most
``max_queued_requests`` wait for the replica (more get 503 from Serve); a request not answered
within ``request_timeout_s`` gets 503. Defaults live in ``rayrlhf.config.schema.ServeConfig``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from rayrlhf.cluster import init_ray
from rayrlhf.config.schema import ServeConfig
from rayrlhf.data.templates import control_tokens
from rayrlhf.models.score_model import ScoreModel, read_metadata
from rayrlhf.models.scoring import score_conversations
from rayrlhf.models.zoo import load_tokenizer
from rayrlhf.serve.scoring_rules import check_threshold, cost_body, flag_threshold, moderation_body, reward_body
from rayrlhf.serve.validation import RequestError, max_body_bytes, parse_score_request, read_body

log = logging.getLogger(__name__)

SERVED_KINDS = ("reward", "cost", "moderation")
APP_NAME = "rayrlhf-score"
# Texts per padded forward pass inside one merged batch (score_conversations sorts by length).
FORWARD_BATCH_SIZE = 16
PROXY_TIMEOUT_MARGIN_S = 5.0


# The one source of the service's defaults (and the reason for each): the `rayrlhf serve`
# schema. ServiceSettings and build_app's keywords read them from here.
DEFAULTS = ServeConfig()


@dataclass(frozen=True)
class ServiceSettings:
    """Everything a replica needs besides the model folders (meanings and defaults: ServeConfig)."""

    template: str = DEFAULTS.template.name
    max_length: int = DEFAULTS.max_length
    max_items: int = DEFAULTS.max_items
    max_chars: int = DEFAULTS.max_chars
    max_batch_size: int = DEFAULTS.max_batch_size
    batch_wait_timeout_s: float = DEFAULTS.batch_wait_timeout_s
    moderation_threshold: float = 0.5  # build_app resolves it (ServeConfig None: the model's calibrated one)
    dtype: str = DEFAULTS.dtype
    torch_threads: int = max(1, int(DEFAULTS.num_cpus))
    request_timeout_s: float = DEFAULTS.request_timeout_s


@dataclass
class Judge:
    """A loaded score model with its tokenizer and what healthz reports about it."""

    model: ScoreModel
    tokenizer: Any
    path: str
    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    failed_batches: int = 0

    def describe(self) -> dict[str, Any]:
        # No folder path: healthz is public wherever the service is, a path is not.
        return {"labels": self.model.labels, "requests": self.requests, "batches": self.batches,
                "largest_batch": self.largest_batch, "failed_batches": self.failed_batches}


def checked_model_dir(path: str | Path, kind: str) -> str:
    """An absolute folder holding a trained ``kind`` score model, or a clear error now.

    Checked in the driver so a wrong path fails at ``build_app`` instead of as a replica
    that keeps restarting; absolute because replicas may run in another working directory.
    """
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"{kind} model folder {str(path)!r} does not exist")
    meta = read_metadata(folder)
    if meta is None:
        raise ValueError(f"{folder} is not a trained rayrlhf score model (no metadata file); "
                         f"serve loads folders written by ScoreModel.save_pretrained")
    if meta["kind"] != kind:
        raise ValueError(f"{folder} holds a {meta['kind']} model, not a {kind} model")
    return str(folder)


def route_of(scope: dict) -> str:
    """The request path below the application's route prefix ('/reward', '/healthz', ...)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return "/" + path.strip("/")


def split_rows(scores: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """[sum(counts), K] scores -> one [count, K] block per request, in request order."""
    return list(torch.split(scores, counts))


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment(name="ScoreService")
class ScoreService:
    """Reward, cost and moderation scoring behind one HTTP ingress (see module docstring)."""

    def __init__(self, model_dirs: dict[str, str | None], settings: ServiceSettings):
        torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        self.judges: dict[str, Judge] = {}
        for kind, path in model_dirs.items():
            if path is None:
                continue
            model = ScoreModel.from_pretrained(path, kind=kind, dtype=settings.dtype).eval()
            self.judges[kind] = Judge(model=model, tokenizer=load_tokenizer(path), path=path)
            log.info("loaded the %s model from %s", kind, path)
        self.batched = {"reward": self.score_reward, "cost": self.score_cost,
                        "moderation": self.score_moderation}
        for method in self.batched.values():
            method.set_max_batch_size(settings.max_batch_size)
            method.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.body_limit = max_body_bytes(settings.max_items, settings.max_chars)
        # Text holding any judge's control-token strings is refused (422), not scored.
        self.control_tokens = sorted({t for judge in self.judges.values() for t in control_tokens(judge.tokenizer)},
                                     key=lambda t: (-len(t), t))

    # One batched method per judge: each gets its own queue, so a burst of reward requests
    # never waits behind cost requests. The decorator's sizes are replaced in __init__.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def score_reward(self, requests: list[list[tuple[str, str]]]) -> list[torch.Tensor]:
        return await self.score_merged("reward", requests)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def score_cost(self, requests: list[list[tuple[str, str]]]) -> list[torch.Tensor]:
        return await self.score_merged("cost", requests)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def score_moderation(self, requests: list[list[tuple[str, str]]]) -> list[torch.Tensor]:
        return await self.score_merged("moderation", requests)

    async def score_merged(self, kind: str,
                           requests: list[list[tuple[str, str]]]) -> list[torch.Tensor | Exception]:
        """Score every pair of every request in one call; return each request's own rows. If
        the merged call fails, each request is scored alone: the one that breaks scoring gets
        its exception back (``handle`` raises it), the others their scores."""
        judge = self.judges[kind]
        try:
            scores = await self.score_pairs(judge, [pair for request in requests for pair in request])
            results: list[torch.Tensor | Exception] = split_rows(scores, [len(request) for request in requests])
        except Exception as err:
            judge.failed_batches += 1
            if len(requests) == 1:
                raise
            log.warning("a merged batch of %d %s requests failed (%s: %s); scoring them one by one",
                        len(requests), kind, type(err).__name__, err)
            results = [await self.score_alone(judge, request) for request in requests]
        judge.requests += sum(not isinstance(result, Exception) for result in results)
        judge.batches += 1
        judge.largest_batch = max(judge.largest_batch, len(requests))
        return results

    async def score_alone(self, judge: Judge, request: list[tuple[str, str]]) -> torch.Tensor | Exception:
        try:
            return await self.score_pairs(judge, request)
        except Exception as err:  # handed to this request alone
            return err

    async def score_pairs(self, judge: Judge, pairs: list[tuple[str, str]]) -> torch.Tensor:
        # A worker thread keeps the event loop free to accept (and queue) the next requests.
        return await asyncio.to_thread(
            score_conversations, judge.model, judge.tokenizer,
            [prompt for prompt, _ in pairs], [response for _, response in pairs],
            template=self.settings.template, max_length=self.settings.max_length,
            batch_size=FORWARD_BATCH_SIZE,
        )

    def response_body(self, kind: str, scores: torch.Tensor) -> dict[str, Any]:
        if kind == "reward":
            return reward_body(scores)
        if kind == "cost":
            return cost_body(scores)
        return moderation_body(scores, self.judges[kind].model.labels,
                               self.settings.moderation_threshold)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "models": {kind: judge.describe() for kind, judge in self.judges.items()},
                "absent": [kind for kind in SERVED_KINDS if kind not in self.judges]}

    async def handle(self, request: Request, route: str) -> JSONResponse:
        if route == "/healthz":
            if request.method != "GET":
                raise RequestError(405, "use GET /healthz")
            return JSONResponse(self.health())
        kind = route.lstrip("/")
        if kind not in SERVED_KINDS:
            raise RequestError(404, f"no route {route!r}; POST /reward, /cost or /moderation, "
                                    f"GET /healthz")
        if request.method != "POST":
            raise RequestError(405, f"use POST {route} with a JSON body")
        if kind not in self.judges:
            raise RequestError(404, f"no {kind} model is loaded in this service; start it with "
                                    f"{kind}_model=<folder> to enable {route}")
        body = await read_body(request.stream(), self.body_limit, request.headers.get("content-length"))
        pairs = parse_score_request(body, max_items=self.settings.max_items, max_chars=self.settings.max_chars,
                                    control_tokens=self.control_tokens)
        scores = await self.batched[kind](pairs)
        if isinstance(scores, Exception):  # this request broke scoring (see score_merged)
            raise scores
        return JSONResponse(self.response_body(kind, scores))

    async def __call__(self, request: Request) -> JSONResponse:
        route = route_of(request.scope)
        started = time.perf_counter()
        timeout = self.settings.request_timeout_s
        try:
            return await asyncio.wait_for(self.handle(request, route), timeout)
        except RequestError as err:
            return error_response(err.status, err.message)
        except TimeoutError:
            log.warning("%s %s not answered within request_timeout_s=%g", request.method, route, timeout)
            return JSONResponse({"error": f"not answered within {timeout:g} s (request_timeout_s); "
                                          "the service is busy, retry later"},
                                status_code=503, headers={"Retry-After": "5"})
        except Exception as err:  # the replica must outlive any single bad request
            log.exception("%s %s failed after %.3f s", request.method, route, time.perf_counter() - started)
            return error_response(500, f"internal error while scoring ({type(err).__name__}); "
                                       f"see the replica log")


def build_app(reward_dir: str | Path | None = None, cost_dir: str | Path | None = None,
              moderation_dir: str | Path | None = None, *, template: str = DEFAULTS.template.name,
              max_length: int = DEFAULTS.max_length, max_items: int = DEFAULTS.max_items,
              max_chars: int = DEFAULTS.max_chars, max_batch_size: int = DEFAULTS.max_batch_size,
              batch_wait_timeout_s: float = DEFAULTS.batch_wait_timeout_s,
              moderation_threshold: float | None = DEFAULTS.moderation_threshold, dtype: str = DEFAULTS.dtype,
              num_cpus: float = DEFAULTS.num_cpus, max_queued_requests: int = DEFAULTS.max_queued_requests,
              request_timeout_s: float = DEFAULTS.request_timeout_s):
    """The bound Serve application scoring with the given judges (at least one); every
    keyword means what the ServeConfig field of its name says, and defaults to it.

    ``max_batch_size`` counts requests merged into one scoring call (each may hold up to
    ``max_items`` pairs); ``batch_wait_timeout_s`` is how long the first request of a batch
    waits for company. ``num_cpus`` is the replica's Ray reservation and its torch threads.
    """
    given = {"reward": reward_dir, "cost": cost_dir, "moderation": moderation_dir}
    model_dirs = {kind: checked_model_dir(path, kind) if path else None for kind, path in given.items()}
    if not any(model_dirs.values()):
        raise ValueError("give at least one of reward_dir, cost_dir, moderation_dir")
    if min(max_items, max_chars, max_batch_size, max_length, max_queued_requests) < 1:
        raise ValueError("max_items, max_chars, max_batch_size, max_length and max_queued_requests must be positive")
    if not request_timeout_s > 0:
        raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s}")
    if moderation_threshold is not None:
        check_threshold(moderation_threshold)
    moderation = model_dirs["moderation"]
    # None: the threshold calibrated when the moderation model was trained (its metadata).
    threshold = flag_threshold(read_metadata(moderation).get("threshold"), moderation_threshold) if moderation \
        else 0.5
    settings = ServiceSettings(
        template=template, max_length=max_length, max_items=max_items, max_chars=max_chars,
        max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
        moderation_threshold=threshold, dtype=dtype,
        torch_threads=max(1, int(num_cpus)), request_timeout_s=float(request_timeout_s),
    )
    # Room for a full batch on every judge at once plus a few health checks; Serve's default
    # of 5 in-flight requests would cap every batch at 5.
    max_ongoing = max_batch_size * len(SERVED_KINDS) + 4
    return ScoreService.options(max_ongoing_requests=max_ongoing, max_queued_requests=max_queued_requests,
                                ray_actor_options={"num_cpus": num_cpus}).bind(model_dirs, settings)


def app_builder(args: dict[str, Any]):
    """The application for Serve config files (``import_path: rayrlhf.serve.app:app_builder``).

    Serve calls a builder with the application's ``args`` as one dict (KubeRay RayService's
    serveConfigV2, ``serve deploy``); its keys are build_app's keyword arguments.
    """
    return build_app(**args)


def normalized_prefix(route_prefix: str) -> str:
    """Serve wants '/' or '/name' (leading slash, no trailing one)."""
    return "/" + route_prefix.strip("/")


def service_url(host: str, port: int, route_prefix: str) -> str:
    prefix = normalized_prefix(route_prefix)
    return f"http://{host}:{port}{'' if prefix == '/' else prefix}"


def run(cfg) -> str:
    """``rayrlhf serve``: start the endpoints, print the URL, and serve until interrupted."""
    app = build_app(cfg.reward_model, cfg.cost_model, cfg.moderation_model,
                    template=cfg.template.name, max_length=cfg.max_length, max_items=cfg.max_items,
                    max_chars=cfg.max_chars, max_batch_size=cfg.max_batch_size,
                    batch_wait_timeout_s=cfg.batch_wait_timeout_s,
                    moderation_threshold=cfg.moderation_threshold, dtype=cfg.dtype,
                    num_cpus=cfg.num_cpus, max_queued_requests=cfg.max_queued_requests,
                    request_timeout_s=cfg.request_timeout_s)  # before Ray starts: a wrong folder fails at once
    init_ray(cfg.cluster)
    # The proxy's own timeout is a backstop a little behind the replica's 503 (which says why).
    serve.start(http_options={"host": cfg.host, "port": cfg.port,
                              "request_timeout_s": cfg.request_timeout_s + PROXY_TIMEOUT_MARGIN_S})
    serve.run(app, name=APP_NAME, route_prefix=normalized_prefix(cfg.route_prefix), blocking=False)
    url = service_url(cfg.host, cfg.port, cfg.route_prefix)
    print(f"rayrlhf serve: scoring at {url}  (POST /reward /cost /moderation, GET /healthz)", flush=True)
    if cfg.block:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("rayrlhf serve: shutting down", flush=True)
            serve.shutdown()
    return url
