"""The ASGI app of `qalc serve` (Starlette): OpenRLHF's `/get_reward`, our `/v1/score`,
`/health` and `/metrics`. Requests are validated here (4xx with a reason); scoring goes
through the `Batcher`, so concurrent requests share one judge call. See docs/serve.md."""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from qalign_dsl.judge.prompts import ROLES
from qalign_dsl.judge.runtime import Sample
from qalign_dsl.safe_io import BadInput, parse_json
from qalign_dsl.serve.batcher import Batcher, ItemResult


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 8 * 1024 * 1024
    max_items: int = 1024


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def create_app(batcher: Batcher, rubric_info: dict[str, Any],
               limits: ServeLimits = ServeLimits(), token: str | None = None) -> Starlette:
    """`token`: the bearer token every request but `/health` must carry (None: no auth)."""
    metrics = batcher.metrics

    def endpoint(handler: Callable[[Request], Awaitable[Response]], path: str,
                 public: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            started = time.monotonic()
            try:
                if token is not None and not public and not _authorized(request, token):
                    response: Response = JSONResponse(
                        {"error": "missing or wrong bearer token (Authorization: Bearer …)"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                else:
                    response = await handler(request)
            except BadRequest as error:
                response = JSONResponse({"error": error.reason}, status_code=error.status)
            metrics.request(path, response.status_code, time.monotonic() - started)
            return response
        return wrapped

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise BadRequest(413, f"request body of {declared} bytes is over the limit of "
                                  f"{limits.max_body_bytes} (--max-body-bytes)")
        body = bytearray()
        async for chunk in request.stream():  # also bounds bodies without a length
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise BadRequest(413, f"request body is over the limit of "
                                      f"{limits.max_body_bytes} bytes (--max-body-bytes)")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadRequest(400, f"the body is not valid UTF-8: {error}") from None
        try:  # strict: NaN, huge integers, deep nesting and lone surrogates are refused
            return parse_json(text)
        except BadInput as error:
            raise BadRequest(400, f"the body is not valid JSON: {error}") from None

    def check_count(count: int) -> None:
        if count > limits.max_items:
            raise BadRequest(413, f"{count} items are over the limit of {limits.max_items} "
                                  "per request (--max-items)")

    async def score(request: Request) -> Response:
        payload = await read_json(request)
        if not isinstance(payload, dict) or not isinstance(payload.get("items"), list):
            raise BadRequest(422, 'expected {"items": [{"prompt": …, "response": …}, …]}')
        items = payload["items"]
        check_count(len(items))
        samples = [_sample(item, f"items[{i}]") for i, item in enumerate(items)]
        results = await batcher.submit(samples)
        return JSONResponse({"rubric": rubric_info,
                             "results": [r.to_json() for r in results]})

    async def get_reward(request: Request) -> Response:
        payload = await read_json(request)
        if not isinstance(payload, dict):
            raise BadRequest(422, 'expected {"query": [...], "prompts": [...], "labels": [...]}')
        queries = _strings(payload.get("query"), "query")
        prompts = _strings(payload.get("prompts"), "prompts")
        check_count(len(queries))
        if len(prompts) != len(queries):
            raise BadRequest(422, f"{len(queries)} queries but {len(prompts)} prompts: "
                                  "send one prompt per query")
        samples = []
        for i, (query, prompt) in enumerate(zip(queries, prompts)):
            # OpenRLHF sends prompt + response as `query`; the response is what follows.
            if not query.startswith(prompt):
                raise BadRequest(422, f"query[{i}] does not start with prompts[{i}]")
            samples.append(Sample(prompt, query[len(prompt):]))
        results = await batcher.submit(samples)
        failed = [(i, r.error) for i, r in enumerate(results) if r.error is not None]
        if failed:
            # OpenRLHF needs a number for every sample; a made-up one would train the policy
            # on noise, so the whole call fails (its client retries) and says which and why.
            return JSONResponse({"error": f"{len(failed)} of {len(results)} samples could "
                                          "not be scored",
                                 "errors": [{"index": i, "error": e} for i, e in failed]},
                                status_code=503)
        rewards = [r.reward for r in results]
        return JSONResponse({"rewards": rewards, "scores": rewards,
                             "extra_logs": _extra_logs(results)})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "rubric": rubric_info})

    async def metrics_text(request: Request) -> Response:
        return PlainTextResponse(metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    routes = [
        Route("/v1/score", endpoint(score, "/v1/score"), methods=["POST"]),
        Route("/get_reward", endpoint(get_reward, "/get_reward"), methods=["POST"]),
        Route("/health", endpoint(health, "/health", public=True), methods=["GET"]),
        Route("/metrics", endpoint(metrics_text, "/metrics"), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _authorized(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(422, f"`{name}` must be a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRequest(422, f"{name}[{i}] must be a string, got {type(item).__name__}")
    return value


def _sample(item: Any, where: str) -> Sample:
    if not isinstance(item, dict):
        raise BadRequest(422, f"{where} must be an object with `prompt` and `response`")
    prompt, response = item.get("prompt"), item.get("response")
    if not isinstance(response, str):
        raise BadRequest(422, f"{where}.response must be a string")
    if isinstance(prompt, list):
        for j, message in enumerate(prompt):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise BadRequest(422, f"{where}.prompt[{j}] must be "
                                      '{"role": string, "content": string}')
            if message["role"] not in ROLES:
                raise BadRequest(422, f"{where}.prompt[{j}].role: unknown role "
                                      f"{message['role'][:40]!r}; allowed: {', '.join(ROLES)}")
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
    elif not isinstance(prompt, str):
        raise BadRequest(422, f"{where}.prompt must be a string or a list of chat messages")
    return Sample(prompt, response)


def _extra_logs(results: list[ItemResult]) -> dict[str, list[float]]:
    """Per-sample principle scores for OpenRLHF's logs; a principle NA for some sample of
    the call is left out (its logs take numbers only)."""
    logs: dict[str, list[float]] = {}
    for principle in results[0].principles if results else ():
        values = [r.principles.get(principle) for r in results]
        if all(v is not None for v in values):
            logs[f"qalign/{principle}"] = [float(v) for v in values if v is not None]
    return logs
