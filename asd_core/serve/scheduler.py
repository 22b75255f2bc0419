"""Batched stages for a server: requests that arrive together share each stage's runs.

Requests arrive one by one from the web threads (:meth:`Scheduler.submit`). One engine thread
(:meth:`Scheduler.serve_forever`) owns the models and repeats :meth:`Scheduler.step`:

1. new requests get their entry decision, together, and wait at the stage it picked;
2. a stage whose queue is full (``max_batch``) or whose oldest request has waited ``max_wait_s``
   runs once on up to ``max_batch`` of them (fewer when their reserved cache does not fit the
   stage's budget: :class:`~asd_core.serve.kv.CacheManager`); the oldest waiting request goes
   first, so no stage starves another;
3. the policy decides for the whole batch; the requests that stop are answered, those that
   escalate join the deeper stage's queue (its next batch), and this stage's cache of them is
   freed;
4. each run's latency updates the live costs, and the tables are solved again when the costs
   have moved (:class:`~asd_core.policy.live_costs.CostTracker`).

A request's listener hears the deepest stage's tokens as they are written (streaming: that
stage's output is final whatever the policy would say); a request whose client has gone is
dropped from its queue, or its sequence is stopped in the middle of a batch.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from asd_core.decoding.pipeline import Pipeline, Request, Trace
from asd_core.ground.errors import AsdError
from asd_core.policy.adaptive import AdaptivePolicy, LiveObserver
from asd_core.policy.baselines import StageAlone
from asd_core.policy.fitting import PolicyModel
from asd_core.policy.live_costs import CostTracker
from asd_core.serve.kv import CacheManager

log = logging.getLogger(__name__)
Clock = Callable[[], float]
PolicyKey = tuple[str, float]  # ("dp", λ) or ("stage", forced depth)


@dataclass(eq=False)
class Job:
    """One request on its way through the hierarchy."""

    request: Request  # what to answer (its item_id is the server's request id)
    lam: float  # the quality-loss weight its decisions use
    depth: int | None = None  # a forced stage: run it alone, from scratch (no policy)
    on_done: Callable[[Job], None] = lambda job: None  # engine thread; trace or error is set
    on_tokens: Callable[[Sequence[int]], None] | None = None  # the deepest stage's tokens so far
    cancelled: bool = False  # set by the web side when its client has gone
    trace: Trace | None = None  # what the pipeline did, once entered
    error: BaseException | None = None  # why it failed
    stage: int = -1  # the stage it waits for
    restart: bool = False  # that stage runs from scratch instead of continuing the draft
    arrived: float = 0.0  # clock time of submit
    queued: float = 0.0  # clock time it joined its current queue
    finished: float = 0.0  # clock time it was answered
    batches: list[int] = field(default_factory=list)  # size of each batch it ran in

    @property
    def policy_key(self) -> PolicyKey:
        return ("stage", float(self.depth)) if self.depth is not None else ("dp", self.lam)


class PolicyBank:
    """Policies by key, solved on first use and again whenever the costs change."""

    def __init__(self, model: PolicyModel, observer: LiveObserver, max_cached: int = 64):
        self.model = model
        self.observer = observer
        self.max_cached = max_cached
        self._cache: dict[PolicyKey, Any] = {}

    def get(self, key: PolicyKey) -> Any:
        policy = self._cache.get(key)
        if policy is None:
            kind, value = key
            K = self.model.n_stages
            policy = (
                StageAlone(int(value), K)
                if kind == "stage"
                else AdaptivePolicy(self.model, float(value), self.observer)
            )
            if len(self._cache) >= self.max_cached:  # forget the oldest λ
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = policy
        return policy

    def refresh(self, model: PolicyModel) -> None:
        """Use ``model`` (new costs) from now on: every table is solved again on next use."""
        self.model = model
        self._cache.clear()


class Scheduler:
    """The engine loop: per-stage queues, batches, decisions (see the module docstring)."""

    def __init__(
        self,
        pipeline: Pipeline,
        policies: PolicyBank,
        cache: CacheManager,
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.02,
        tracker: CostTracker | None = None,
        on_stage: Callable[[int, Sequence[Job]], None] = lambda stage, jobs: None,
        clock: Clock = time.monotonic,
    ):
        if max_batch < 1:
            raise AsdError(f"max_batch must be ≥ 1, got {max_batch}")
        self.pipeline = pipeline
        self.policies = policies
        self.cache = cache
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.tracker = tracker
        self.on_stage = on_stage  # metrics: called after each stage batch
        self.clock = clock
        self.inbox: queue.Queue[Job] = queue.Queue()
        self.queues: list[deque[Job]] = [deque() for _ in range(pipeline.n_stages)]
        self.in_flight = 0  # submitted and not yet answered (read by /health and shutdown)
        self._lock = threading.Lock()

    # -- the web side -----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job (any thread); ``job.on_done`` is called from the engine thread."""
        job.arrived = self.clock()
        with self._lock:
            self.in_flight += 1
        self.inbox.put(job)

    # -- the engine thread ------------------------------------------------------------------------
    def serve_forever(self, stop: threading.Event) -> None:
        """Step until ``stop`` is set and every submitted job is answered."""
        while not (stop.is_set() and self.in_flight == 0):
            wait = self.step()
            if wait > 0:
                try:
                    job = self.inbox.get(timeout=wait)
                except queue.Empty:
                    continue
                self.inbox.put(job)  # back for the next step to admit with the others

    def step(self, idle_s: float = 0.1) -> float:
        """One round: admit arrivals, run one ready stage. Returns how long the loop may wait
        for arrivals before the next round: 0 after a run, until the first partial batch is due,
        or ``idle_s`` when nothing waits."""
        self._admit()
        stage, wait = self._ready_stage()
        if stage is None:
            return idle_s if wait is None else max(min(wait, idle_s), 1e-4)
        self._run(stage)
        return 0.0

    def _finish(self, job: Job, error: BaseException | None = None) -> None:
        job.error = error
        job.finished = self.clock()
        if job.trace is not None:
            self.policies.observer.forget(job.request.item_id)
        with self._lock:
            self.in_flight -= 1
        try:
            job.on_done(job)
        except Exception:  # a callback must not stop the engine
            log.exception("request %s: completion callback failed", job.request.item_id)

    def _admit(self) -> None:
        """Entry decisions for everything that arrived, grouped by policy."""
        arrived: list[Job] = []
        while True:
            try:
                arrived.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        groups: dict[PolicyKey, list[Job]] = defaultdict(list)
        for job in arrived:
            if job.cancelled:
                self._finish(job)
            else:
                groups[job.policy_key].append(job)
        now = self.clock()
        for key, jobs in groups.items():
            try:
                traces = self.pipeline.enter([j.request for j in jobs], self.policies.get(key))
            except Exception as exc:
                log.exception("entry decision failed for %d requests", len(jobs))
                for j in jobs:
                    self._finish(j, exc)
                continue
            for job, trace in zip(jobs, traces, strict=True):
                job.trace, job.stage, job.queued = trace, trace.entry_stage, now
                self.queues[job.stage].append(job)

    def _ready_stage(self) -> tuple[int | None, float | None]:
        """The stage to run now (oldest waiting request first), or how long to wait."""
        now, best, wait = self.clock(), None, None
        for k, q in enumerate(self.queues):
            while q and q[0].cancelled:
                self._finish(q.popleft())
            if not q:
                continue
            left = q[0].queued + self.max_wait_s - now
            if len(q) >= self.max_batch or left <= 0:
                if best is None or q[0].queued < self.queues[best][0].queued:
                    best = k
            else:
                wait = left if wait is None else min(wait, left)
        return best, wait

    def _take(self, stage: int) -> list[Job]:
        q = self.queues[stage]
        jobs: list[Job] = []
        while q and len(jobs) < self.max_batch:
            job = q.popleft()
            if job.cancelled:
                self._finish(job)
            else:
                jobs.append(job)
        reserve = [
            self.cache.reservation(
                len(self.pipeline.prompt_ids(stage, j.request)), j.request.params.max_new_tokens
            )
            for j in jobs
        ]
        n = self.cache.fits(stage, reserve)
        for job in reversed(jobs[n:]):  # over the budget: first in the next batch
            q.appendleft(job)
        return jobs[:n]

    def _listener(self, job: Job, deepest: bool) -> Callable[[int, Sequence[int]], bool]:
        def hear(index: int, tokens: Sequence[int]) -> bool:
            if job.cancelled:
                return False  # stops the sequence: its slot goes to the next one
            if deepest and job.on_tokens is not None:
                job.on_tokens(tokens)
            return True

        return hear

    def _run(self, stage: int) -> None:
        """Run ``stage`` on a batch, decide for it, and pass every job on."""
        jobs = self._take(stage)
        if not jobs:
            return
        deepest = stage == self.pipeline.n_stages - 1
        traces = [j.trace for j in jobs]
        assert all(t is not None for t in traces)
        try:
            self.pipeline.run_stage(
                stage,
                traces,  # type: ignore[arg-type]
                [j.restart for j in jobs],
                [self._listener(j, deepest) for j in jobs],
            )
        except Exception as exc:
            log.exception("stage %d failed on a batch of %d", stage, len(jobs))
            for j in jobs:
                self._release(stage, j)
                self._finish(j, exc)
            return
        for j in jobs:
            j.batches.append(len(jobs))
        self._observe(stage, jobs)
        self.on_stage(stage, jobs)
        self._decide(stage, jobs)

    def _decide(self, stage: int, jobs: Sequence[Job]) -> None:
        groups: dict[PolicyKey, list[Job]] = defaultdict(list)
        for j in jobs:
            groups[j.policy_key].append(j)
        now = self.clock()
        for key, members in groups.items():
            live = [j for j in members if not j.cancelled]
            try:
                moves = self.pipeline.decide(stage, [j.trace for j in live], self.policies.get(key))  # type: ignore[misc]
            except Exception as exc:
                log.exception("decision after stage %d failed", stage)
                moves, failed = [], exc
                for j in live:
                    self._release(stage, j)
                    self._finish(j, failed)
                live = []
            for j in members:
                if j.cancelled:
                    self._release(stage, j)
                    self._finish(j)
            for j, move in zip(live, moves, strict=True):
                self._release(stage, j)
                if move is None:
                    self._finish(j)
                else:
                    j.stage, j.restart, j.queued = move.stage, move.restart, now
                    self.queues[move.stage].append(j)

    def _release(self, stage: int, job: Job) -> None:
        with contextlib.suppress(AsdError):  # a prompt too long for it never reached its cache
            self.cache.release(stage, self.pipeline.prompt_ids(stage, job.request))

    def _observe(self, stage: int, jobs: Sequence[Job]) -> None:
        if self.tracker is None:
            return
        observer = self.policies.observer
        for j in jobs:
            trace = j.trace
            if trace is None or j.cancelled:
                continue
            run = trace.runs[-1]
            n_in, known = observer.lengths(trace)
            self.tracker.observe(
                stage, trace.request.task, n_in, known, run.latency_s, run.from_stage
            )
        if self.tracker.stale():
            self.policies.refresh(self.tracker.model_now())
            log.info(
                "costs moved: tables solved again (relative cost factors %s)",
                ", ".join(f"{f:.2f}" for f in self.tracker.relative()),
            )
