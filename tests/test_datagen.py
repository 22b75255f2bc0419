"""The generations dataset on tiny models: schema and labels, resume after SIGKILL, refusals.

Stage 0 uses the BPE tokenizer and stages 1-2 the byte tokenizer, so 0 → 1 and 0 → 2 verify
across tokenizers; stage 2 is stage 1's model under another name, so 1 → 2 verifies a model's
own greedy output (accepted whole, up to near-ties) and exercises the "accepted" labels.
Task data are small local files (no package index needed).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asd_core.analysis import generation_summaries
from asd_core.data import Item, select, split_of
from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.learning.features import FeatureSet, StageView
from asd_core.models.registry import load_backend
from asd_core.runs import datagen, generations, selection, shards

REPO = Path(__file__).resolve().parents[1]
STAGES = (
    StageConfig(
        name="bpe-1L",
        source="tiny:layers:1,hidden:64,seed:5,tokenizer:bpe",
        runtime="transformers",
        dtype="float32",
        context_length=512,
    ),
    StageConfig(
        name="bytes-2L",
        source="tiny:layers:2,hidden:64,seed:2",
        runtime="transformers",
        dtype="float32",
        context_length=512,
    ),
    StageConfig(
        name="bytes-2L-again",
        source="tiny:layers:2,hidden:64,seed:2",
        runtime="transformers",
        dtype="float32",
        context_length=512,
    ),
)
TASKS = ("mmlu", "asdiv", "truthfulqa", "humaneval")
N_ROWS = 30  # items per task file: every split has a few


def write_task_files(folder: Path) -> dict[str, str]:
    """Small local files in each task's schema; returns task -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    mmlu = folder / "mmlu.csv"
    with mmlu.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "A", "B", "C", "D", "answer"])
        for i in range(N_ROWS):
            writer.writerow([f"What is {i} plus 1?", i + 1, i, i + 2, i * 2, "ABCD"[i % 4]])
    asdiv = folder / "asdiv.jsonl"
    asdiv.write_text(
        "".join(
            json.dumps(
                {
                    "question": f"Tom has {i} apples and gets 2 more. How many?",
                    "answer": f"{i + 2} apples",
                }
            )
            + "\n"
            for i in range(N_ROWS)
        ),
        encoding="utf-8",
    )
    tqa = folder / "truthfulqa.jsonl"
    tqa.write_text(
        "".join(
            json.dumps(
                {
                    "question": f"Is {i} even?",
                    "answer": [f"{i} is {'even' if i % 2 == 0 else 'odd'}."],
                }
            )
            + "\n"
            for i in range(N_ROWS)
        ),
        encoding="utf-8",
    )
    humaneval = folder / "humaneval.jsonl"
    humaneval.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": f'def f{i}(x):\n    """Return x plus {i}."""\n',
                    "test": f"def check(candidate):\n    assert candidate(1) == {1 + i}\n",
                    "entry_point": f"f{i}",
                }
            )
            + "\n"
            for i in range(N_ROWS)
        ),
        encoding="utf-8",
    )
    return {
        "mmlu": str(mmlu),
        "asdiv": str(asdiv),
        "truthfulqa": str(tqa),
        "humaneval": str(humaneval),
    }


def make_spec(sources: dict[str, str], **overrides: object) -> selection.DatagenSpec:
    fields: dict[str, object] = {
        "profile": "test",
        "stages": STAGES,
        "tasks": TASKS,
        "train_per_task": 3,
        "calibration_per_task": 1,
        "test_per_task": 2,
        "seed": 3,
        "shard_size": 2,
        "batch_size": 2,
        "max_new_tokens": {t: 8 for t in TASKS},
        "task_sources": sources,
    }
    fields.update(overrides)
    return selection.DatagenSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_task_files(tmp_path_factory.mktemp("task-files"))


@pytest.fixture(scope="module")
def models(models_dir: Path) -> Path:
    """The project's models folder: tiny models are built there once and reused."""
    return models_dir


@pytest.fixture(scope="module")
def backends(models: Path) -> Iterator[list]:
    loaded = [load_backend(s, models) for s in STAGES]
    yield loaded
    for b in loaded:
        b.close()


@dataclass(frozen=True)
class Reference:
    """One uninterrupted run of ``make_spec(sources)``."""

    data_dir: Path  # its data_dir
    df: pd.DataFrame  # its rows
    n_shards: int  # shards it wrote
    shard_s: float  # mean wall-clock s per shard (models already loaded)


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, sources: dict[str, str], backends: list
) -> Reference:
    data_dir = tmp_path_factory.mktemp("data-reference")
    result = datagen.run(make_spec(sources), data_dir, backends=backends, progress=False)
    assert result.shards_written == result.n_shards == math.ceil(result.n_items / 2)
    df = generations.load_generations(result.folder)
    return Reference(data_dir, df, result.n_shards, result.seconds / result.n_shards)


def one_line(excinfo: pytest.ExceptionInfo[AsdError]) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


# per-token statistics and the hidden state: what a kernel's rounding can move
FLOAT_COLUMNS = ("logprobs", "entropy", "top1_logprob", "top2_logprob", "hidden_mean")


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame, skip: tuple[str, ...] = ()) -> None:
    """Equal rows and values in every column but the timing ones and ``skip`` (NaN equals NaN)."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for column in a.columns:
        if column in generations.TIMING_COLUMNS or column in skip:
            continue
        for i, (x, y) in enumerate(zip(a[column], b[column], strict=True)):
            if x is None or y is None:
                assert x is None and y is None, (column, i)
            elif isinstance(x, np.ndarray | list):
                np.testing.assert_array_equal(
                    np.asarray(x), np.asarray(y), err_msg=f"{column}[{i}]"
                )
            elif isinstance(x, float) and math.isnan(x):
                assert isinstance(y, float) and math.isnan(y), (column, i)
            else:
                assert x == y, (column, i, x, y)


# -- schema and labels ----------------------------------------------------------------------------
def test_schema_labels_and_features(reference: Reference) -> None:
    df = reference.df
    K = len(STAGES)
    assert list(df.columns) == list(generations.COLUMNS)
    assert set(generations.TIMING_COLUMNS) == {"latency_s", "prefill_s", "verify_s_by"}
    assert len(df) == K * df["item_id"].nunique()
    assert not df.duplicated(["item_id", "stage"]).any()
    counts = df[df["stage"] == 0].groupby(["task", "split"]).size()
    assert counts.to_dict() == {
        (t, s): n for t in TASKS for s, n in (("train", 3), ("calibration", 1), ("test", 2))
    }
    assert (df["split"] == [split_of(i) for i in df["item_id"]]).all()
    manifest = df.attrs["manifest"]
    assert df.attrs["complete"] and manifest["profile"] == "test"
    assert manifest["generation"]["mmlu"] == {
        "max_new_tokens": 8,
        "stop_strings": [],
        "options": ["A", "B", "C", "D"],
    }

    features = FeatureSet(n_stages=K)
    for item_id, rows in df.groupby("item_id", sort=False):
        rows = rows.sort_values("stage")
        final = rows.iloc[-1]
        assert list(rows["stage"]) == list(range(K))
        for k, row in enumerate(rows.itertuples(index=False)):
            r = row._asdict()
            n = r["n_out"]
            assert r["n_stages"] == K and r["stage_name"] == STAGES[k].name
            assert r["n_in"] == len(r["prompt_ids"]) and n == len(r["token_ids"])
            for column in ("logprobs", "entropy", "top1_logprob", "top2_logprob"):
                assert len(r[column]) == n, column
            assert np.all(r["top1_logprob"] >= r["top2_logprob"])
            assert np.all(r["logprobs"] <= r["top1_logprob"] + 1e-5)
            assert r["hidden_mean"] is None
            drafted, accepted = np.asarray(r["drafted_by"]), np.asarray(r["accepted_by"])
            assert len(drafted) == len(accepted) == len(r["verify_s_by"]) == K
            assert np.all(drafted[: k + 1] == -1) and np.all(accepted[: k + 1] == -1)
            assert np.all(np.isnan(r["verify_s_by"][: k + 1]))
            assert np.all((accepted[k + 1 :] >= 0) & (accepted[k + 1 :] <= drafted[k + 1 :]))
            assert np.all(np.asarray(r["verify_s_by"][k + 1 :]) >= 0)
            if k == K - 1:
                assert (r["label_token"], r["label_answer"], r["accepted_frac_final"]) == (
                    1,
                    1,
                    1.0,
                )
            else:
                assert r["label_token"] == int(accepted[-1] == drafted[-1])
                assert r["accepted_frac_final"] == pytest.approx(accepted[-1] / drafted[-1])
            if r["text"] == final["text"] and r["answer"]:
                assert r["label_answer"] == 1
            # an answer that could not be extracted ("") agrees with nothing, not even "";
            # free text agrees when close enough, by the threshold fitted on calibration rows
            if r["task"] == "truthfulqa":
                threshold = df.attrs["text_agreement"]["threshold"]
                agrees = r["answer"] != "" and r["similarity_final"] >= threshold
            else:
                agrees = r["answer"] != "" and r["answer"] == final["answer"]
            assert r["label_answer"] == int(k == K - 1 or agrees)
            if r["stop_reason"] == "length":  # cut by its budget: no final answer
                assert r["answer"] == ""
            if k == 0:
                assert math.isnan(r["accepted_frac_prev"])
            else:
                prev = rows.iloc[k - 1]
                frac = prev["accepted_by"][k] / prev["drafted_by"][k]
                assert r["accepted_frac_prev"] == pytest.approx(frac)
            assert r["correct"] in (0.0, 1.0)
            assert math.isnan(r["rouge_l"]) == (r["task"] != "truthfulqa")
            assert math.isnan(r["similarity_final"]) == (r["task"] != "truthfulqa")
            x = features.extract(StageView.from_row(r))
            assert x.shape == (features.n_features,) and np.all(np.isfinite(x)), item_id
    # stage 2 is stage 1's model: it accepts stage 1's own greedy output (near-ties aside)
    same = df[df["stage"] == 1]
    whole = [a[2] == d[2] for a, d in zip(same["accepted_by"], same["drafted_by"], strict=True)]
    assert np.mean(whole) >= 0.75
    assert same["label_token"].mean() >= 0.75


def test_shards_hold_one_task_and_tasks_take_turns(reference: Reference) -> None:
    df = reference.df[reference.df["stage"] == 0].reset_index(drop=True)
    tasks = df["task"].tolist()
    shards = [tasks[i : i + 2] for i in range(0, len(tasks), 2)]  # shard_size 2, 6 per task
    assert all(len(set(s)) == 1 for s in shards)
    firsts = [s[0] for s in shards]
    assert set(firsts[: len(TASKS)]) == set(TASKS)  # every task in the first round
    assert [firsts.count(t) for t in TASKS] == [3] * len(TASKS)


def test_manifest_gives_the_online_requests(reference: Reference) -> None:
    """eval.online rebuilds the pipeline requests from the manifest alone."""
    from asd_core.runs.online import requests_for

    manifest = generations.read_manifest(generations.generations_dir(reference.data_dir, "test"))
    assert manifest is not None
    ids = sorted(reference.df["item_id"].unique())
    requests = requests_for(manifest, reference.data_dir, ids)
    assert [r.item_id for r in requests] == ids
    spec = make_spec({})
    for r in requests:
        assert r.params.max_new_tokens == spec.generation_params(r.task).max_new_tokens
        assert r.params.stop_strings == spec.generation_params(r.task).stop_strings


def test_summary_tables(reference: Reference) -> None:
    df = reference.df
    summary = generation_summaries.summary_table(df)
    assert len(summary) == len(TASKS) * len(STAGES)
    assert (summary.loc[summary["stage"] == 2, "answer_accept_rate"] == 1.0).all()
    agreement = generation_summaries.agreement_table(df)
    assert len(agreement) == len(TASKS) * (len(STAGES) - 1)
    cells = ["agree_both_correct", "agree_not_both", "differ_both_correct", "differ_not_both"]
    assert (agreement[cells].sum(axis=1) == agreement["n"]).all()
    hops = generation_summaries.hop_table(df)
    assert len(hops) == len(TASKS) * 3  # hops 0→1, 0→2, 1→2
    assert (hops["mean_accepted"] <= hops["mean_drafted"]).all()


def test_hidden_states_when_asked(sources: dict[str, str], backends: list, tmp_path: Path) -> None:
    spec = make_spec(
        sources,
        tasks=("truthfulqa",),
        task_sources={"truthfulqa": sources["truthfulqa"]},
        train_per_task=1,
        calibration_per_task=0,
        test_per_task=0,
        return_hidden=True,
    )
    result = datagen.run(spec, tmp_path, backends=backends, progress=False)
    df = generations.load_generations(result.folder)
    assert [len(h) for h in df["hidden_mean"]] == [64, 64, 64]  # the tiny models' width
    assert all(np.all(np.isfinite(h)) for h in df["hidden_mean"])


def test_solo_shards_run_one_sequence_at_a_time(
    sources: dict[str, str], backends: list, tmp_path: Path
) -> None:
    spec = make_spec(
        sources,
        tasks=("asdiv",),
        task_sources={"asdiv": sources["asdiv"]},
        solo_every=2,
    )
    result = datagen.run(spec, tmp_path, backends=backends, progress=False)
    df = generations.load_generations(result.folder)
    shard = np.arange(len(df)) // (2 * len(STAGES))  # shard_size 2: 6 rows per shard
    assert set(df["gen_batch"][shard % 2 == 0]) == {1}
    assert set(df["gen_batch"][shard % 2 == 1]) == {2}
    assert all(b.stage.reuse_prompts for b in backends)  # restored after each solo shard


# -- resuming -------------------------------------------------------------------------------------
def _shards(folder: Path) -> int:
    return len(list(folder.glob(generations.SHARD_GLOB)))


def test_kill_and_resume_gives_identical_rows(
    tmp_path: Path, sources: dict[str, str], models: Path, reference: Reference
) -> None:
    """SIGKILL a generating process five times at random points; the rows equal an uninterrupted run.

    Both runs are the same command in fresh processes with the same environment, so the only
    difference is the kills. Every column but the timing ones must be equal exactly, floats
    included: a resumed shard is computed from the same inputs in the same batches, and oneMKL's
    reproducibility mode (``MKL_CBWR``, set by ``asd_core``) keeps torch's CPU kernels from
    rounding differently in another process.
    """
    spec = make_spec(sources)  # the reference's parameters: batches are the same
    spec_path = tmp_path / "spec.json"
    fields = {k: v for k, v in vars(spec).items() if k != "stages"}
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    spec_path.write_text(
        json.dumps({**fields, "stages": [s.model_dump() for s in STAGES]}), encoding="utf-8"
    )
    log = tmp_path / "log.txt"

    def start(data_dir: Path) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "asd_core.runs.datagen",
            str(spec_path),
            "--data-dir",
            str(data_dir),
            "--models-dir",
            str(models),
            "--no-progress",
        ]
        with log.open("ab") as out:
            return subprocess.Popen(
                command, cwd=REPO, stdout=out, stderr=out, start_new_session=True
            )

    uninterrupted_dir = tmp_path / "uninterrupted"
    assert start(uninterrupted_dir).wait(timeout=300) == 0, log.read_text(errors="replace")[-2000:]
    uninterrupted = generations.load_generations(
        generations.generations_dir(uninterrupted_dir, "test")
    )

    # Kill after a random number of complete shards (increasing, so every round makes progress)
    # plus a random fraction of a shard's time: mid-generation or while a shard is written.
    data_dir = tmp_path / "data"
    folder = generations.generations_dir(data_dir, spec.profile)
    rng = random.Random(20240607)
    targets = sorted(rng.sample(range(1, reference.n_shards - 2), 5))
    for target in targets:
        proc = start(data_dir)
        deadline = time.monotonic() + 120
        while _shards(folder) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.9) * reference.shard_s)
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started, by id
        proc.wait()
    assert targets[-1] <= _shards(folder) < reference.n_shards
    proc = start(data_dir)
    assert proc.wait(timeout=300) == 0, log.read_text(errors="replace")[-2000:]
    assert not list(folder.glob(".shard-*"))  # no half-written shard left behind
    resumed = generations.load_generations(folder)
    assert resumed.attrs["complete"]
    assert_same_rows(uninterrupted, resumed)
    # the in-process run (other tests' fixture) wrote the same tokens, texts and labels
    assert_same_rows(reference.df, resumed, skip=FLOAT_COLUMNS)


def test_finished_folder_is_kept_as_is(
    reference: Reference, sources: dict[str, str], backends: list
) -> None:
    data_dir = reference.data_dir
    folder = generations.generations_dir(data_dir, "test")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    result = datagen.run(make_spec(sources), data_dir, backends=backends, progress=False)
    assert (result.shards_written, result.shards_skipped) == (0, result.n_shards)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


# -- refusals -------------------------------------------------------------------------------------
def _copy(reference: Reference, tmp_path: Path, profile: str) -> tuple[Path, Path]:
    data_dir = tmp_path / "data"
    folder = generations.generations_dir(data_dir, profile)
    shutil.copytree(generations.generations_dir(reference.data_dir, "test"), folder)
    return data_dir, folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_folder_of_another_profile_is_refused(
    reference: Reference, sources: dict[str, str], tmp_path: Path
) -> None:
    data_dir, folder = _copy(reference, tmp_path, "other")
    before = _snapshot(folder)
    with pytest.raises(generations.DatagenError) as excinfo:
        datagen.run(make_spec(sources, profile="other"), data_dir, progress=False)
    msg = one_line(excinfo)
    assert str(folder) in msg and "'profile'" in msg
    assert _snapshot(folder) == before

    # the command line says the same in one line on stderr and exits 2
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "profile": "other",
                "stages": [s.model_dump() for s in STAGES],
                "tasks": list(TASKS),
                "train_per_task": 3,
                "calibration_per_task": 1,
                "test_per_task": 2,
                "seed": 3,
                "max_new_tokens": {t: 8 for t in TASKS},
            }
        ),
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "asd_core.runs.datagen", str(spec), "--data-dir", str(data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("asd: error: ")
    assert "'profile'" in done.stderr
    assert _snapshot(folder) == before


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"shard_size": 3}, "'shard_size'"),
        ({"max_new_tokens": {t: 9 for t in TASKS}}, "'generation.mmlu.max_new_tokens'"),
        ({"mc_scoring": "generate"}, "'generation.mmlu.options'"),
        ({"test_per_task": 1}, "'per_task.test'"),
        (
            {"stages": (*STAGES[:2], STAGES[2].model_copy(update={"dtype": "bfloat16"}))},
            "'stages[2].dtype'",
        ),
    ],
)
def test_other_content_parameters_are_refused(
    reference: Reference,
    sources: dict[str, str],
    tmp_path: Path,
    change: dict[str, object],
    key: str,
) -> None:
    data_dir, folder = _copy(reference, tmp_path, "test")
    before = _snapshot(folder)
    with pytest.raises(generations.DatagenError) as excinfo:
        datagen.run(make_spec(sources, **change), data_dir, progress=False)
    assert key in one_line(excinfo)
    assert _snapshot(folder) == before


def test_broken_shard_is_named_not_overwritten(
    reference: Reference, sources: dict[str, str], tmp_path: Path, backends: list
) -> None:
    data_dir, folder = _copy(reference, tmp_path, "test")
    broken = generations.shard_path(folder, 1)
    broken.write_bytes(b"not parquet")
    with pytest.raises(generations.DatagenError) as excinfo:
        datagen.run(make_spec(sources), data_dir, backends=backends, progress=False)
    assert str(broken) in one_line(excinfo)
    assert broken.read_bytes() == b"not parquet"


@pytest.mark.parametrize(
    "change",
    [
        {"train_per_task": 0, "calibration_per_task": 0, "test_per_task": 0},
        {"tasks": (), "task_sources": {}},
    ],
)
def test_empty_selection_is_one_error(
    sources: dict[str, str], tmp_path: Path, change: dict[str, object]
) -> None:
    with pytest.raises(generations.DatagenError) as excinfo:
        datagen.run(make_spec(sources, **change), tmp_path, progress=False)
    assert "selection is empty" in one_line(excinfo)
    assert not (tmp_path / "generations").exists()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"top_k": 1}, "datagen_top_k"),
        ({"shard_size": 0}, "datagen_shard_size"),
        ({"tasks": ("mmlu", "mmlu"), "task_sources": {}}, "tasks"),
        ({"split_fractions": (0.5, 0.5, 0.5)}, "sum to 1"),
        ({"tasks": ("squad",), "task_sources": {}}, "squad"),
        ({"task_sources": {"gsm8k": "x.jsonl"}}, "datagen_task_sources"),
    ],
)
def test_bad_spec_is_one_error(
    sources: dict[str, str], change: dict[str, object], key: str
) -> None:
    with pytest.raises(AsdError) as excinfo:
        make_spec(sources, **change)
    assert key in one_line(excinfo)


def test_from_params_reads_flat_keys() -> None:
    params = {
        "profile": "smoke",
        "seed": 4,
        "stages": [s.model_dump() for s in STAGES],
        "tasks": ["mmlu"],
        "split_fractions": [0.5, 0.25, 0.25],
        "datagen_train_per_task": 3,
        "datagen_calibration_per_task": 1,
        "datagen_test_per_task": 2,
        "datagen_max_new_tokens": {"mmlu": 8},
    }
    spec = selection.DatagenSpec.from_params(params)
    assert spec.stages == STAGES and spec.seed == 4 and spec.per_split["train"] == 3
    assert spec.tasks == ("mmlu",) and spec.split_fractions == (0.5, 0.25, 0.25)
    assert spec.generation_params("mmlu").max_new_tokens == 8
    assert spec.generation_params("mmlu").top_k == 2
    with pytest.raises(generations.DatagenError, match="datagen_shards"):
        selection.DatagenSpec.from_params({**params, "datagen_shards": 3})


def test_load_generations_errors(tmp_path: Path) -> None:
    with pytest.raises(generations.DatagenError) as excinfo:
        generations.load_generations(tmp_path / "missing")
    assert "no generations folder" in one_line(excinfo)
    with pytest.raises(generations.DatagenError) as excinfo:
        generations.load_generations(tmp_path)
    assert "no generated rows" in one_line(excinfo)


# -- sampling -------------------------------------------------------------------------------------
ITEMS = [Item(item_id=f"mmlu/{i:06d}", task="mmlu", question=f"q{i}") for i in range(60)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 12), seed=st.integers(0, 2**32 - 1))
def test_sampling_is_select_when_everything_fits(n: int, seed: int) -> None:
    pool = [it for it in ITEMS if split_of(it.item_id) == "train"]
    chosen, passed = selection.sample_fitting(pool, n, seed, lambda item: True)
    assert chosen == select(ITEMS, "train", n, seed) and passed == 0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 60), seed=st.integers(0, 2**32 - 1))
def test_sampling_skips_what_does_not_fit(n: int, seed: int) -> None:
    fits = lambda item: int(item.item_id[-2:]) % 3 != 0  # noqa: E731
    chosen, passed = selection.sample_fitting(ITEMS, n, seed, fits)
    assert len(chosen) == min(n, 40) and all(map(fits, chosen))
    assert chosen == sorted(chosen, key=lambda it: it.item_id)  # pool order
    bigger, _ = selection.sample_fitting(ITEMS, min(n + 5, 60), seed, fits)
    assert set(it.item_id for it in chosen) <= set(it.item_id for it in bigger)
    assert passed >= 0


def test_items_without_gold_get_an_answer_key_and_no_quality() -> None:
    question = "Pick one.\n\nA. red\nB. blue\nC. green\nD. black\n\nAnswer with the letter."
    unlabelled = Item(item_id="mmlu/000001", task="mmlu", question=question)
    score = shards._quality(selection.Entry(unlabelled, "train"), "The answer is B.", None, False)
    assert score.extracted == "B" and math.isnan(score.correct)
    cut = shards._quality(selection.Entry(unlabelled, "train"), "The answer is B.", None, True)
    assert cut.extracted == "" and math.isnan(cut.correct)
    labelled = Item(item_id="mmlu/000002", task="mmlu", question=question, answer="B")
    score = shards._quality(selection.Entry(labelled, "train"), "The answer is B.", None, False)
    assert (score.extracted, score.correct) == ("B", 1.0)


# -- unlabelled pool prompts ----------------------------------------------------------------------
POOL = [
    Item(item_id=f"pool-openbookqa/{i:06d}", task="mmlu", question=f"p{i}", meta={"pool": "x"})
    for i in range(30)
]


def test_pool_prompts_join_the_train_split_and_grow_stably(sources: dict[str, str]) -> None:
    spec = make_spec(sources, tasks=("mmlu",), task_sources={}, pool_per_task={"mmlu": 5})
    items = {"mmlu": ITEMS}
    sel = selection.select_entries(spec, items, pool_prompts={"mmlu": POOL})
    pooled = [e for e in sel.entries if e.item.item_id.startswith("pool-")]
    assert len(pooled) == 5 and {e.split for e in pooled} == {"train"}
    assert sel.counts["mmlu/pool"] == 5 and sel.counts["mmlu/train"] == 3
    more = make_spec(sources, tasks=("mmlu",), task_sources={}, pool_per_task={"mmlu": 9})
    bigger = selection.select_entries(more, items, pool_prompts={"mmlu": POOL})
    assert {e.item.item_id for e in pooled} <= {e.item.item_id for e in bigger.entries}
    short = lambda item: item.item_id.startswith("mmlu/") or int(item.item_id[-2:]) < 4  # noqa: E731
    with pytest.raises(generations.DatagenError) as excinfo:
        selection.select_entries(spec, items, short, pool_prompts={"mmlu": POOL})
    assert "datagen_pool_per_task.mmlu: asks for 5 prompts; its pools hold 30, of which 4" in (
        one_line(excinfo)
    )


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"pool_per_task": {"gsm8k": 3}}, "datagen_pool_per_task: 'gsm8k' is not in tasks"),
        ({"pool_per_task": {"mmlu": -1}}, "datagen_pool_per_task.mmlu"),
    ],
)
def test_bad_pool_counts_are_one_error(
    sources: dict[str, str], change: dict[str, object], key: str
) -> None:
    with pytest.raises(AsdError) as excinfo:
        make_spec(sources, **change)
    assert key in one_line(excinfo)


def test_pool_count_beyond_the_supply_is_refused_before_loading(
    sources: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asd_core.data import pools

    supply = pools.Supply("mmlu", tuple(POOL), (pools.PoolCount("x", 30, 0, 0, 0, 0, 30),))
    monkeypatch.setattr(pools, "supplies", lambda *a, **k: {"mmlu": supply})
    spec = make_spec(sources, pool_per_task={"mmlu": 31})
    with pytest.raises(AsdError) as excinfo:
        datagen.run(spec, tmp_path, tmp_path / "no-models", progress=False)
    assert "hold 30 prompts after dropping evaluation questions; asked for 31" in one_line(excinfo)
