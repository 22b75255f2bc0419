"""The serving engine: one process holding each stage's model once, the saved policy, and the
scheduler thread that batches requests per stage.

:class:`Engine` is what the web layer talks to: it checks a request against the stages (prompt
and ``max_tokens`` within every context it may reach), hands it to the
:class:`~asd_core.serve.scheduler.Scheduler` and reports the answer through callbacks. Backends
are loaded by name through the registry, or injected (tests pass tiny models).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asd_core.decoding.pipeline import Pipeline, Request, request_prompt_ids
from asd_core.ground.errors import AsdError
from asd_core.ground.files import repo_path
from asd_core.models.base import Backend, GenerationParams
from asd_core.models.registry import load_backend
from asd_core.policy.adaptive import LiveObserver
from asd_core.policy.live_costs import CostTracker
from asd_core.policy.saved import SavedPolicy, check_stages, load_policy
from asd_core.serve.kv import CacheManager
from asd_core.serve.metrics import ServerMetrics
from asd_core.serve.scheduler import Job, PolicyBank, Scheduler
from asd_core.serve.settings import ServingSettings

log = logging.getLogger(__name__)


class RequestError(AsdError):
    """A request the server refuses: ``status`` (4xx), the offending ``param`` and a code."""

    def __init__(self, message: str, param: str | None, status: int = 400, code: str = "invalid"):
        super().__init__(message)
        self.param = param
        self.status = status
        self.code = code


class Engine:
    """Models, policy and scheduler of one server."""

    def __init__(
        self,
        settings: ServingSettings,
        backends: Sequence[Backend] | None = None,
        policy: SavedPolicy | None = None,
    ):
        self.settings = settings
        # the policy first: a file for other stages is refused before any model loads
        if policy is None:
            path = repo_path(settings.policy_file)
            policy = load_policy(path, settings.stages, settings.label_mode)
        else:
            check_stages("the given policy", policy.stages, settings.stages)
        self.policy = policy
        self.backends = list(backends) if backends is not None else self._load()
        self.stage_names = [s.name for s in settings.stages]
        self.pipeline = Pipeline(self.backends)
        model = self.policy.model
        entry = self.backends[model.predictor.config.input_stage]
        self.observer = LiveObserver(model.predictor, entry.tokenizer)
        self.tracker = CostTracker(model, settings.cost_ema_rate, settings.cost_resolve_fraction)
        self.cache = CacheManager(self.backends, settings.kv_budget_tokens)
        self.metrics = ServerMetrics(self.stage_names, self.cache, self.tracker)
        self.scheduler = Scheduler(
            self.pipeline,
            PolicyBank(model, self.observer),
            self.cache,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            tracker=self.tracker,
            on_stage=self._stage_metrics,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resolves_seen = 0

    def _load(self) -> list[Backend]:
        loaded: list[Backend] = []
        try:
            for stage in self.settings.stages:
                log.info("loading stage %s (%s, %s)", stage.name, stage.runtime, stage.source)
                loaded.append(load_backend(stage, Path(repo_path(self.settings.models_dir))))
        except BaseException:
            for b in loaded:
                b.close()
            raise
        return loaded

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.scheduler.serve_forever, args=(self._stop,), name="asd-engine", daemon=True
        )
        self._thread.start()

    def stop(self, close: bool = True) -> None:
        """Answer every request in flight, stop the engine thread, free the models."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if close:
            for b in self.backends:
                b.close()
        log.info("engine stopped: nothing in flight%s", ", models freed" if close else "")

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- requests ---------------------------------------------------------------------------------
    def make_request(
        self,
        text: str,
        task: str,
        max_tokens: int,
        stop: Sequence[str],
        messages: Sequence[tuple[str, str]] = (),
        raw: bool = False,
        depth: int | None = None,
        param: str = "messages",
    ) -> Request:
        """A pipeline request, refused (:class:`RequestError`) when it cannot fit a stage."""
        params = GenerationParams(
            max_new_tokens=max_tokens, stop_strings=tuple(stop), top_k=self.settings.top_k
        )
        request = Request(f"req-{uuid.uuid4().hex[:16]}", task, text, params, tuple(messages), raw)
        reachable = range(len(self.backends)) if depth is None else [depth]
        for k in reachable:
            backend = self.backends[k]
            n = len(request_prompt_ids(backend.tokenizer, request))
            limit = backend.stage.context_length
            if n + max_tokens > limit:
                raise RequestError(
                    f"'{param}': {n} prompt tokens + max_tokens {max_tokens} exceed the context "
                    f"length {limit} of stage '{backend.stage.name}'",
                    param,
                    code="context_length_exceeded",
                )
        return request

    def submit(
        self,
        request: Request,
        lam: float,
        depth: int | None,
        on_done: Callable[[Job], None],
        on_tokens: Callable[[Sequence[int]], None] | None = None,
    ) -> Job:
        if not self.alive:
            raise RequestError("the engine is not running", None, status=503, code="unavailable")
        job = Job(request, lam, depth, on_done=on_done, on_tokens=on_tokens)
        self.scheduler.submit(job)
        return job

    def decode(self, stage: int, token_ids: Sequence[int]) -> str:
        """Text of a stage's tokens, special tokens removed."""
        return str(self.backends[stage].tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def _stage_metrics(self, stage: int, jobs: Sequence[Job]) -> None:
        name = self.stage_names[stage]
        m = self.metrics
        m.batch_size.labels(name).observe(len(jobs))
        for j in jobs:
            if j.trace is None or not j.trace.runs:
                continue
            run = j.trace.runs[-1]
            m.stage_latency.labels(name).observe(run.latency_s)
            if run.from_stage is not None:
                m.accepted.labels(name).inc(run.n_accepted)
                m.drafted.labels(name).inc(run.n_draft)
        if self.tracker.resolves > self._resolves_seen:
            m.resolves.inc(self.tracker.resolves - self._resolves_seen)
            self._resolves_seen = self.tracker.resolves

    def describe(self) -> dict[str, Any]:
        """What ``/health`` reports."""
        return {
            "status": "ok" if self.alive else "stopped",
            "model": self.settings.model_name,
            "stages": self.stage_names,
            "in_flight": self.scheduler.in_flight,
            "queued": [len(q) for q in self.scheduler.queues],
            "policy_commit": self.policy.provenance.get("git_commit"),
        }
