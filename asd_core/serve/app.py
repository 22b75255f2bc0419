"""The HTTP side: an OpenAI-compatible API over the :class:`~asd_core.serve.engine.Engine` (FastAPI).

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text). Every refused request gets a 4xx with
OpenAI's error body naming the field, is logged, counted, and the server goes on. A streamed
answer sends the final stage's text as it is decided: the deepest stage's tokens as it writes them
(its verified prefix at once), a shallower stage's whole answer when the policy stops there.
A client that goes away has its request dropped or its sequence stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from asd_core.decoding.verify import REPLACEMENT
from asd_core.serve import protocol
from asd_core.serve.engine import Engine, RequestError
from asd_core.serve.scheduler import Job

log = logging.getLogger("asd_core.serve.requests")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class _Answer:
    """Bridges the engine thread's callbacks to one request's asyncio side."""

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: Engine, stops: Sequence[str]):
        self.loop = loop
        self.engine = engine
        self.stops = list(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # a stop string may start
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.streamed = ""  # deepest-stage text sent so far (engine thread writes it)
        self.deepest = len(engine.backends) - 1

    def on_tokens(self, tokens: Sequence[int]) -> None:  # engine thread
        text = protocol.visible_text(self.engine.decode(self.deepest, tokens), self.stops)
        safe = text[: len(text) - self.hold] if self.hold else text
        safe = safe.rstrip(REPLACEMENT)  # half a character: wait for the rest
        if len(safe) > len(self.streamed) and safe.startswith(self.streamed):
            delta, self.streamed = safe[len(self.streamed) :], safe
            self.loop.call_soon_threadsafe(self.events.put_nowait, ("delta", delta))

    def on_done(self, job: Job) -> None:  # engine thread
        self.loop.call_soon_threadsafe(self.events.put_nowait, ("done", job))


class _Server:
    """The routes' work, over one engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.settings = engine.settings
        self.metrics = engine.metrics

    def refuse(self, err: RequestError, endpoint: str) -> JSONResponse:
        self.metrics.errors.labels(str(err.status), str(err.param)).inc()
        self.metrics.requests.labels(endpoint, str(err.status)).inc()
        log.warning("%s refused (%d, %s): %s", endpoint, err.status, err.param, err)
        body = protocol.error_body(str(err), err.param, err.code, err.status)
        return JSONResponse(body, status_code=err.status)

    def resolve_model(self, body: Any) -> int | None:
        """The forced depth: the request's ``depth``, or the stage it names as its model."""
        names = self.engine.stage_names
        if body.model != self.settings.model_name and body.model not in names:
            raise RequestError(
                f"'model': unknown model {body.model!r}; this server has "
                f"{', '.join([self.settings.model_name, *names])}",
                "model", status=404, code="model_not_found",
            )  # fmt: skip
        depth = names.index(body.model) if body.model in names else body.depth
        if depth is not None and not 0 <= depth < len(names):
            raise RequestError(f"'depth': {depth} is not a stage (0..{len(names) - 1})", "depth")
        return depth

    def build(self, body: Any, chat: bool) -> tuple[Any, int | None, float]:
        depth = self.resolve_model(body)
        max_tokens = (
            body.max_tokens or body.max_completion_tokens or self.settings.max_tokens_default
        )
        if max_tokens > self.settings.max_tokens_limit:
            raise RequestError(
                f"'max_tokens': {max_tokens} is over this server's limit "
                f"{self.settings.max_tokens_limit}",
                "max_tokens",
            )
        task = body.task or self.settings.default_task
        if chat:
            turns = [
                (m.role if m.role != "developer" else "system", m.text()) for m in body.messages
            ]
            users = [c for r, c in turns if r == "user"]
            text = users[-1] if users else turns[-1][1]
            request = self.engine.make_request(
                text, task, max_tokens, body.stops(), turns, False, depth
            )
        else:
            request = self.engine.make_request(
                body.text(), task, max_tokens, body.stops(), (), True, depth, param="prompt"
            )
        return request, depth, body.lam or self.settings.default_lambda

    async def complete(self, http: Request, chat: bool) -> Response:
        endpoint = "chat" if chat else "completions"
        start = time.perf_counter()
        try:
            body = protocol.parse_body(
                await http.body(), protocol.ChatBody if chat else protocol.CompletionBody
            )
            request, depth, lam = self.build(body, chat)
        except RequestError as err:
            return self.refuse(err, endpoint)
        answer = _Answer(asyncio.get_running_loop(), self.engine, body.stops())
        try:
            job = self.engine.submit(
                request, lam, depth, answer.on_done, answer.on_tokens if body.stream else None
            )
        except RequestError as err:
            return self.refuse(err, endpoint)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        model = body.model
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            events = self._stream(answer, job, rid, model, chat, include_usage, start, endpoint)
            return StreamingResponse(events, media_type="text/event-stream")
        done = await self._wait(http, answer, job)
        if done is None:
            self.metrics.requests.labels(endpoint, "499").inc()
            log.info("%s %s: client went away", endpoint, request.item_id)
            return Response(status_code=499)
        if done.error is not None:
            return self._failed(done, endpoint)
        text = protocol.visible_text(done.trace.output.text, body.stops())  # type: ignore[union-attr]
        self._record(done, endpoint, start)
        return JSONResponse(
            protocol.response(done, text, model, self.engine.stage_names, chat, rid)
        )

    async def _wait(self, http: Request, answer: _Answer, job: Job) -> Job | None:
        """The finished job, or None when the client disconnected first (the job is dropped)."""
        while True:
            try:
                kind, done = await asyncio.wait_for(answer.events.get(), timeout=0.25)
            except TimeoutError:
                if await http.is_disconnected():
                    job.cancelled = True
                    return None
                continue
            if kind == "done":
                return done

    def _failed(self, job: Job, endpoint: str) -> JSONResponse:
        self.metrics.requests.labels(endpoint, "500").inc()
        self.metrics.errors.labels("500", "None").inc()
        log.error("%s %s failed: %s", endpoint, job.request.item_id, job.error)
        body = protocol.error_body(f"the pipeline failed: {job.error}", None, "internal", 500)
        return JSONResponse(body, status_code=500)

    def _record(self, job: Job, endpoint: str, start: float) -> None:
        trace = job.trace
        assert trace is not None
        self.metrics.requests.labels(endpoint, "200").inc()
        self.metrics.depth.observe(trace.depth)
        self.metrics.request_latency.observe(time.perf_counter() - start)
        self.metrics.generated.inc(trace.output.n_out)
        log.info(
            "%s %s 200 %.3fs depth=%s path=%s lambda=%s",
            endpoint, job.request.item_id, time.perf_counter() - start,
            self.engine.stage_names[trace.depth], "→".join(self.engine.stage_names[k] for k in trace.path),
            job.lam if job.depth is None else f"forced:{job.depth}",
        )  # fmt: skip

    async def _stream(
        self,
        answer: _Answer, job: Job, rid: str, model: str, chat: bool, include_usage: bool,
        start: float, endpoint: str,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        def event(body: dict[str, Any]) -> bytes:
            return f"data: {json.dumps(body)}\n\n".encode()

        finished = False
        try:
            yield event(protocol.chunk(rid, model, chat, "" if chat else None, first=True))
            sent = ""
            while True:
                kind, value = await answer.events.get()
                if kind == "delta":
                    sent += value
                    yield event(protocol.chunk(rid, model, chat, value))
                    continue
                finished = True
                done: Job = value
                if done.error is not None:
                    self._failed(done, endpoint)
                    err = protocol.error_body(
                        f"the pipeline failed: {done.error}", None, "internal", 500
                    )
                    yield event(err)
                    break
                assert done.trace is not None
                text = protocol.visible_text(done.trace.output.text, answer.stops)
                if text.startswith(sent) and len(text) > len(sent):
                    yield event(protocol.chunk(rid, model, chat, text[len(sent) :]))
                elif not text.startswith(sent):
                    log.warning("%s: streamed text is not a prefix of the answer", rid)
                extra = {"asd": protocol.extension(done, self.engine.stage_names)}
                if include_usage:
                    extra["usage"] = protocol.usage(done)
                finish = protocol.FINISH[done.trace.output.stop_reason]
                yield event(protocol.chunk(rid, model, chat, None, finish, extra))
                self._record(done, endpoint, start)
                break
            yield b"data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away mid-stream: free its slot
                job.cancelled = True
                self.metrics.requests.labels(endpoint, "499").inc()
                log.info("%s %s: client went away mid-stream", endpoint, job.request.item_id)


def create_app(engine: Engine, *, manage: bool = True) -> FastAPI:
    """The FastAPI app. ``manage``: start the engine with the app and stop it (finishing what is
    in flight, freeing the models) when the app shuts down."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage:
            engine.start()
        try:
            yield
        finally:
            if manage:
                log.info("shutting down: finishing %d requests", engine.scheduler.in_flight)
                await asyncio.to_thread(engine.stop)

    app = FastAPI(title="asd: adaptive speculative decoding", lifespan=lifespan)
    server = _Server(engine)
    settings = engine.settings

    @app.post("/v1/chat/completions")
    async def chat_completions(http: Request) -> Response:
        return await server.complete(http, chat=True)

    @app.post("/v1/completions")
    async def completions(http: Request) -> Response:
        return await server.complete(http, chat=False)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        ids = [settings.model_name, *engine.stage_names]
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": i, "object": "model", "created": created, "owned_by": "asd"} for i in ids
            ],
        }

    @app.get("/health")
    async def health() -> JSONResponse:
        info = engine.describe()
        return JSONResponse(info, status_code=200 if info["status"] == "ok" else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(engine.metrics.text(), media_type=PROMETHEUS_TEXT)

    return app
