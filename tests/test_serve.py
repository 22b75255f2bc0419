"""The OpenAI-compatible server, for real on a loopback port, over three tiny stages.

The policy is fitted on a synthetic generations frame for the tiny stages' names and sources and
saved as a policy file, as notebook 03 does; the server loads it and each stage's model once.
Every answer is checked against the stage it ended at run alone (the pipeline is lossless), so a
server that returned another stage's text, or mixed up requests in a batch, fails here.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from asd_core.decoding.pipeline import Request, request_prompt_ids
from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.learning.ensemble import TrainConfig
from asd_core.learning.features import FeatureSet
from asd_core.learning.predictor import train_predictor
from asd_core.models.base import GenerationParams
from asd_core.policy import fitting, live_costs, saved
from asd_core.serve.engine import Engine
from asd_core.serve.settings import ServingSettings, load_settings
from benchmarks.features import synthetic_frame, with_costs

REPO = Path(__file__).resolve().parents[1]
K = 3
SPECS = ["layers:1,hidden:64,seed:5,tokenizer:bpe", "layers:2,hidden:64,seed:2", "layers:2,hidden:64,seed:1"]  # fmt: skip
STAGES = [
    StageConfig(name=f"tiny{k}", source=f"tiny:{spec}", runtime="transformers", dtype="float32",
                context_length=192, max_batch=4)
    for k, spec in enumerate(SPECS)
]  # fmt: skip
PROMPTS = ["What is 6 times 7?", "def add(a, b):", "Name a colour.", "🚀 ok", "2 + 2 =", "Hello"]


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gens = with_costs(synthetic_frame(240, K, seed=3))
    train, calib = (gens[gens["split"] == s] for s in ("train", "calibration"))
    cfg = TrainConfig(max_epochs=15, patience=3, n_members=2)
    pred = train_predictor(train, calib, FeatureSet(K), "answer", cfg, seed=1)
    model = fitting.fit_policy_model(pred, train, calib, fitting.RiskSettings(), n_bins=5)
    path = tmp_path_factory.mktemp("policy") / "policy.pt"
    return saved.save_policy(model, path, STAGES, provenance={"git_commit": "test"})


def settings_for(policy_file: Path, tmp: Path, **extra: object) -> ServingSettings:
    values = {
        "port": 0,
        "policy_file": str(policy_file),
        "stages": [s.model_dump() for s in STAGES],
        "models_dir": str(tmp / "models"),
        "max_tokens_default": 12,
        "max_tokens_limit": 64,
        "max_wait_ms": 150.0,
        "log_file": str(tmp / "server.log"),
        **extra,
    }
    return ServingSettings.model_validate(values)


class LiveServer:
    """uvicorn on a loopback port in a thread, with the app's lifespan (engine start/stop)."""

    def __init__(self, engine: Engine):
        import uvicorn

        from asd_core.serve.app import create_app

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(engine), log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture(scope="module")
def engine(policy_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    tmp = tmp_path_factory.mktemp("serve")
    eng = Engine(settings_for(policy_file, tmp))
    yield eng
    for b in eng.backends:
        b.close()


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[LiveServer]:
    engine_stop = engine.stop
    engine.stop = lambda close=True: engine_stop(close=False)  # type: ignore[method-assign]
    with LiveServer(engine) as live:
        yield live


def chat(url: str, text: str, **extra: object) -> httpx.Response:
    body = {"model": "asd", "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def metric(body: str, name: str) -> float:
    """The value of one sample line of a Prometheus text body (0 when absent)."""
    line = next((ln for ln in body.splitlines() if ln.startswith(name + " ")), None)
    return float(line.split()[-1]) if line else 0.0


def alone(engine: Engine, stage: int, text: str, max_tokens: int = 12) -> str:
    """What ``stage`` writes for the prompt on its own (the server's answer at that depth)."""
    backend = engine.backends[stage]
    request = Request("x", "truthfulqa", text, GenerationParams(max_new_tokens=max_tokens))
    (g,) = backend.generate([request_prompt_ids(backend.tokenizer, request)], request.params)
    return g.text


def test_chat_answers_are_the_text_of_the_stage_they_ended_at(
    server: LiveServer, engine: Engine
) -> None:
    depths = set()
    for text in PROMPTS[:4]:
        r = chat(server.url, text, temperature=0.0)
        assert r.status_code == 200, r.text
        body = r.json()
        ext = body["asd"]
        depths.add(ext["depth"])
        assert body["object"] == "chat.completion" and body["model"] == "asd"
        assert body["choices"][0]["message"]["content"] == alone(engine, ext["depth"], text)
        assert ext["path"][-1] == ext["depth_name"] == engine.stage_names[ext["depth"]]
        assert set(ext["stage_latency_s"]) == set(ext["path"])
        assert ext["lambda"] == 1.0 and ext["decision_overhead_s"] >= 0
        assert body["usage"]["completion_tokens"] > 0
        assert body["usage"]["total_tokens"] == sum(
            body["usage"][k] for k in ("prompt_tokens", "completion_tokens")
        )


def test_lambda_and_depth_change_where_requests_end(server: LiveServer, engine: Engine) -> None:
    """A tiny λ (cost is everything) and a huge one (quality is everything) must end at
    different depths on the same prompts; a forced depth runs that stage alone."""
    low = [chat(server.url, t, **{"lambda": 1e-4}).json()["asd"]["depth"] for t in PROMPTS]
    high = [chat(server.url, t, **{"lambda": 1e4}).json()["asd"]["depth"] for t in PROMPTS]
    assert np.mean(high) > np.mean(low), (low, high)
    assert set(high) == {K - 1}
    for k in range(K):
        ext = chat(server.url, PROMPTS[0], depth=k).json()["asd"]
        assert ext["path"] == [engine.stage_names[k]] and ext["forced_depth"] == k
        by_name = chat(server.url, PROMPTS[0], model=engine.stage_names[k]).json()
        assert by_name["asd"]["path"] == [engine.stage_names[k]]
        assert by_name["choices"][0]["message"]["content"] == alone(engine, k, PROMPTS[0])


def test_completions_models_and_health(server: LiveServer, engine: Engine) -> None:
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "asd", "prompt": "Once upon", "max_tokens": 8}, timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and isinstance(body["choices"][0]["text"], str)
    backend = engine.backends[body["asd"]["depth"]]
    req = Request("x", "truthfulqa", "Once upon", GenerationParams(max_new_tokens=8), raw=True)
    (g,) = backend.generate([request_prompt_ids(backend.tokenizer, req)], req.params)
    assert body["choices"][0]["text"] == g.text
    ids = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
    assert ids == ["asd", *engine.stage_names]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["stages"] == engine.stage_names


def test_requests_that_arrive_together_share_batches(server: LiveServer) -> None:
    with httpx.Client(timeout=120) as client:
        results: list[dict] = []

        def send(text: str) -> None:
            body = {"model": "asd", "messages": [{"role": "user", "content": text}], "depth": 2}
            results.append(client.post(f"{server.url}/v1/chat/completions", json=body).json())

        threads = [threading.Thread(target=send, args=(t,)) for t in PROMPTS[:4]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    sizes = [r["asd"]["batch_sizes"][0] for r in results]
    assert max(sizes) > 1, sizes  # arrived within max_wait of each other: one batch


def test_streaming_sends_the_same_text_in_pieces(server: LiveServer) -> None:
    text = PROMPTS[1]
    whole = chat(server.url, text, depth=2, max_tokens=24).json()["choices"][0]["message"][
        "content"
    ]
    body = {"model": "asd", "messages": [{"role": "user", "content": text}], "depth": 2,
            "max_tokens": 24, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    chunks = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]"
    events = [json.loads(c) for c in chunks[:-1]]
    pieces = [e["choices"][0]["delta"].get("content") for e in events]
    assert "".join(p for p in pieces if p) == whole
    assert sum(1 for p in pieces if p) >= 2  # tokens as they were written, not one block
    last = events[-1]
    assert last["choices"][0]["finish_reason"] in {"stop", "length"}
    assert last["asd"]["path"][-1] == "tiny2" and last["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b"{not json", 400, "body"),
        (b"\xff\xfe{}", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (json.dumps({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404, "model"),
        (json.dumps({"model": "asd", "messages": [{"role": "user", "content": "hi"}], "lambda": 0}).encode(), 400, "lambda"),
        (json.dumps({"model": "asd", "messages": [{"role": "user", "content": "hi"}], "lambda": -1}).encode(), 400, "lambda"),
        (json.dumps({"model": "asd", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "asd", "messages": [{"role": "user", "content": "word " * 400}]}).encode(), 400, "messages"),
        (json.dumps({"model": "asd", "messages": []}).encode(), 400, "messages"),
        (json.dumps({"model": "asd", "messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400, "messages[0].role"),
        (json.dumps({"model": "asd", "messages": [{"role": "user", "content": "hi"}], "depth": 7}).encode(), 400, "depth"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_4xx_naming_the_field_and_the_server_goes_on(
    server: LiveServer, content: bytes, status: int, param: str
) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", content=content,
                   headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and param.split("[")[0] in error["message"]
    assert chat(server.url, "still there?").status_code == 200


def test_too_long_raw_prompt_names_the_prompt(server: LiveServer) -> None:
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "asd", "prompt": "x " * 400})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_metrics_count_requests_depths_latency_and_memory(server: LiveServer) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    assert chat(server.url, PROMPTS[2], depth=1).status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    assert httpx.get(f"{server.url}/metrics").headers["content-type"].startswith("text/plain")

    served = 'asd_requests_total{endpoint="chat",status="200"}'
    assert metric(text, served) == metric(before, served) + 1
    assert metric(text, "asd_depth_count") == metric(before, "asd_depth_count") + 1
    assert 'asd_stage_latency_seconds_count{stage="tiny1"}' in text
    for name in ("asd_kv_cache_bytes", "asd_kv_cache_capacity_tokens", "asd_stage_cost",
                 "asd_stage_cost_factor", "asd_accepted_tokens_total", "asd_errors_total"):  # fmt: skip
        assert name in text, name
    assert metric(text, 'asd_stage_cost{stage="tiny2"}') == pytest.approx(1.0)


def test_a_client_that_goes_away_frees_its_request(server: LiveServer, engine: Engine) -> None:
    body = {"model": "asd", "messages": [{"role": "user", "content": "Tell a story."}],
            "depth": 2, "max_tokens": 64, "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
        next(r.iter_lines())  # the first chunk, then hang up
    deadline = time.monotonic() + 60
    while engine.scheduler.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.scheduler.in_flight == 0
    assert 'status="499"' in httpx.get(f"{server.url}/metrics").text
    assert chat(server.url, "next one").status_code == 200


# -- the pieces without HTTP ---------------------------------------------------------------------
def test_policy_file_for_other_stages_is_refused_at_start(
    policy_file: Path, tmp_path: Path
) -> None:
    other = settings_for(policy_file, tmp_path).model_dump()
    other["stages"][1]["source"] = "tiny:layers:3,hidden:64,seed:9"
    with pytest.raises(AsdError, match=r"field 'stages\[1\].source'"):
        Engine(ServingSettings.model_validate(other))


def test_serving_file_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump({"policy_file": "p.pt", "stages": [], "port": 1}))
    with pytest.raises(AsdError, match="serving.yaml: key 'stages'"):
        load_settings(path)
    path.write_text(
        yaml.safe_dump({"policy_file": "p.pt", "stages": [STAGES[0].model_dump()], "prot": 1})
    )
    with pytest.raises(AsdError, match="key 'prot': unknown key"):
        load_settings(path)


def test_live_costs_move_the_tables_when_a_stage_slows_down(policy_file: Path) -> None:
    model = saved.load_policy(policy_file).model
    tracker = live_costs.CostTracker(model, rate=0.5, resolve_fraction=0.2)
    assert not tracker.stale()
    known = {0: 10.0}
    predicted = live_costs.predicted_cost(model.input_costs, 0, "asdiv", 20.0, known, None)
    for _ in range(6):  # stage 0 now takes 5x what the fit says; the deepest as fitted
        tracker.observe(0, "asdiv", 20.0, known, 5 * predicted)
        tracker.observe(2, "asdiv", 20.0, {2: 10.0},
                        live_costs.predicted_cost(model.input_costs, 2, "asdiv", 20.0, {2: 10.0}, None))  # fmt: skip
    assert tracker.stale() and tracker.relative()[0] == pytest.approx(5.0, rel=0.05)
    moved = tracker.model_now()
    assert not tracker.stale() and tracker.resolves == 1
    np.testing.assert_allclose(
        moved.costs.scratch[0], model.costs.scratch[0] * tracker.relative()[0]
    )
    np.testing.assert_allclose(moved.costs.scratch[2], model.costs.scratch[2])
    with pytest.raises(AsdError, match="cost factors"):
        live_costs.rescaled(model, np.array([1.0, -1.0, 1.0]))


def test_a_stage_that_slows_down_under_load_moves_the_tables(
    engine: Engine, policy_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a λ where cost is everything, requests enter at the cheapest stage. Once that stage
    runs far slower than its fit, concurrent requests' latencies move the live costs, the
    tables are solved again (the metric counts it) and later requests enter elsewhere; a server
    that never re-solved, or solved with the old costs, keeps sending them to the slow stage."""
    live_engine = Engine(
        settings_for(policy_file, tmp_path, cost_ema_rate=0.5, max_wait_ms=50.0),
        backends=engine.backends,
        policy=engine.policy,
    )
    engine_stop = live_engine.stop
    live_engine.stop = lambda close=True: engine_stop(close=False)  # type: ignore[method-assign]
    cheap = {"lambda": 1e-4, "max_tokens": 8}

    def burst(url: str) -> list[dict]:
        with httpx.Client(timeout=120) as client:
            body = {"model": "asd", **cheap}
            out: list[dict] = [{}] * len(PROMPTS)

            def send(i: int) -> None:
                msgs = [{"role": "user", "content": PROMPTS[i]}]
                r = client.post(f"{url}/v1/chat/completions", json={**body, "messages": msgs})
                out[i] = r.json()["asd"]

            threads = [threading.Thread(target=send, args=(i,)) for i in range(len(PROMPTS))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return out

    def resolves(url: str) -> float:
        return metric(httpx.get(f"{url}/metrics").text, "asd_policy_resolves_total")

    with LiveServer(live_engine) as live:
        before = burst(live.url)
        assert all(e["path"][0] == "tiny0" for e in before), before
        solved = resolves(live.url)
        real_clock, reads = engine.backends[0].clock, itertools.count()
        # the stage's own clock now gains half a second at every reading: every run it times
        # (what the server observes) takes seconds instead of milliseconds
        monkeypatch.setattr(engine.backends[0], "clock", lambda: real_clock() + 0.5 * next(reads))
        during = burst(live.url)  # enters at tiny0 once more, and measures how slow it has become
        assert any(e["path"][0] == "tiny0" for e in during)
        after = burst(live.url)
        assert resolves(live.url) > solved
        assert all(e["path"][0] != "tiny0" for e in after), after
        factors = live_engine.tracker.relative()
        assert factors[0] > 5 * factors[1], factors


def test_sigterm_finishes_the_request_in_flight_then_exits(
    policy_file: Path, tmp_path: Path
) -> None:
    settings = settings_for(policy_file, tmp_path).model_dump()
    config = tmp_path / "serving.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asd_core.serve", "--config", str(config)],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = None
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serving asd" in line:
                url = line.strip().split(" on ")[-1]
                break
        assert url, "no start line"
        up_by = time.monotonic() + 60
        while True:  # the start line is logged just before uvicorn listens
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.ConnectError:
                assert time.monotonic() < up_by and proc.poll() is None, "the server never listened"
            time.sleep(0.1)
        result: dict = {}
        sender = threading.Thread(
            target=lambda: result.update(
                r=chat(url, "A long answer please.", depth=2, max_tokens=64)
            )
        )
        sender.start()
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health").json()["in_flight"] == 0:  # wait until it is in flight
            assert time.monotonic() < deadline and sender.is_alive(), "the request never arrived"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        sender.join(timeout=120)
        assert result["r"].status_code == 200
        # uvicorn re-raises the SIGTERM it caught once it has shut down cleanly
        assert proc.wait(timeout=120) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert "200" in log and "shutting down" in log and "models freed" in log


def test_cli_refuses_a_missing_policy_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "serving.yaml"
    values = settings_for(tmp_path / "none.pt", tmp_path).model_dump()
    config.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [sys.executable, "-m", "asd_core.serve", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"asd: error: {tmp_path / 'none.pt'}: policy file not found (notebook 03 writes it)"
    )


@pytest.mark.slow
def test_the_demo_on_the_cpu_hierarchy_through_the_openai_client() -> None:
    """The README's demo: the committed cpu policy, real models, the official client; a small λ
    must end no deeper on average than a large one, and strictly shallower somewhere."""
    from asd_core.serve import demo

    if not (REPO / "reports/policy/policy.pt").is_file():
        pytest.skip("no cpu policy file (notebook 03 on the cpu profile writes it)")
    proc, url = demo.start_server("params/serving.yaml")
    try:
        rows = demo.ask(url, [0.05, 50.0], max_tokens=48)
    finally:
        assert demo.stop_server(proc) in (0, -signal.SIGTERM)
    names = [s.name for s in load_settings(REPO / "params/serving.yaml").stages]
    depth = {
        lam: [names.index(str(r["depth"])) for r in rows if r["lambda"] == lam]
        for lam in (0.05, 50.0)
    }
    assert all(r["answer"] for r in rows)
    assert np.mean(depth[0.05]) < np.mean(depth[50.0]), depth
