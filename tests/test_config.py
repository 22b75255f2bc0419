"""Parameter files: the shipped profiles load; every malformed case is one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from asd_core.data.tasks import TASKS
from asd_core.ground import config
from asd_core.ground.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "params" / "base.yaml"


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_shipped_profiles_validate(profile: str) -> None:
    params = config.load([BASE, REPO / "params" / f"{profile}.yaml"])
    assert params.profile == profile
    assert len(params.stages) >= 3
    assert all(lam > 0 for lam in params.lambdas)


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_task_has_a_token_budget(profile: str) -> None:
    """A task added to the code (or to a profile's tasks) must come with a measured budget."""
    params = config.load([BASE, REPO / "params" / f"{profile}.yaml"])
    missing = set(get_args(config.TaskName)) - set(params.datagen_max_new_tokens)
    assert not missing, f"params: no datagen_max_new_tokens entry for {sorted(missing)}"
    assert set(get_args(config.TaskName)) == set(TASKS)


def test_paper_profile_maps_tensor_parallel_sizes() -> None:
    params = config.load([BASE, REPO / "params" / "paper.yaml"])
    assert [s.tensor_parallel_size for s in params.stages] == [1, 1, 2, 4]
    assert {s.runtime for s in params.stages} == {"vllm"}
    assert params.num_gpus == 8


def test_later_file_replaces_whole_key(tmp_path: Path) -> None:
    override = tmp_path / "o.yaml"
    override.write_text("lambdas: [3.0]\n")
    params = config.load([BASE, REPO / "params" / "cpu.yaml", override])
    assert params.lambdas == [3.0]


BAD_CASES = {
    "unknown key": ("lamdas: [1.0]\n", "'lamdas': unknown key"),
    "wrong type": ("seed: 'three'\n", "'seed'"),
    "bool is not an int": ("profile_repeats: true\n", "'profile_repeats'"),
    "lambda zero": ("lambdas: [1.0, 0]\n", "'lambdas[1]'"),
    "lambda negative": ("lambdas: [-0.5]\n", "'lambdas[0]'"),
    "zero stages": ("stages: []\n", "'stages'"),
    "tp larger than gpus": (
        "stages:\n  - {name: a, source: x/y, runtime: vllm, tensor_parallel_size: 4}\n",
        "'stages[0].tensor_parallel_size'",
    ),
    "tp without vllm": (
        "stages:\n  - {name: a, source: x/y, runtime: transformers, tensor_parallel_size: 2}\n",
        "needs runtime vllm",
    ),
    "unknown stage key": (
        "stages:\n  - {name: a, source: x/y, runtime: vllm, gpus: 2}\n",
        "'stages[0].gpus': unknown key",
    ),
    "unknown runtime": (
        "stages:\n  - {name: a, source: x/y, runtime: onnx}\n",
        "'stages[0].runtime'",
    ),
    "duplicate stage names": (
        "stages:\n  - {name: a, source: x, runtime: transformers}\n"
        "  - {name: a, source: y, runtime: transformers}\n",
        "unique",
    ),
    "stage sizes vs stages": ("stage_sizes: [1.0]\n", "'stage_sizes': 1 sizes for 3 stages"),
    "fractions not summing to 1": ("split_fractions: [0.5, 0.2, 0.2]\n", "must sum to 1"),
    "a task without a budget": (
        "datagen_max_new_tokens: {mmlu: 16, humaneval: 512, truthfulqa: 64}\n",
        "key 'datagen_max_new_tokens': no token budget for task 'asdiv'",
    ),
    "a zero budget": ("datagen_max_new_tokens: {mmlu: 0}\n", "'datagen_max_new_tokens.mmlu'"),
    "unknown mc scoring": ("datagen_mc_scoring: cloze\n", "'datagen_mc_scoring'"),
    "not a mapping": ("- 1\n- 2\n", "mapping"),
    "broken yaml": ("seed: [1,\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_params_are_one_clear_line(case: str, tmp_path: Path) -> None:
    text, expected = BAD_CASES[case]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load([BASE, REPO / "params" / "cpu.yaml", bad])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    cross_field = {"tp larger than gpus", "tp without vllm", "duplicate stage names"}
    cross_field |= {"stage sizes vs stages", "fractions not summing to 1"}
    if case not in cross_field:
        assert str(bad) in message  # names the file that set the bad key


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: parameter file not found"):
        config.load([BASE, tmp_path / "nope.yaml"])


def test_cli_exit_code_and_single_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("lambdas: [0]\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asd_core.ground.config",
            str(BASE),
            str(REPO / "params/cpu.yaml"),
            str(bad),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lambdas[0]" in lines[0]
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "asd_core.ground.config",
            str(BASE),
            str(REPO / "params/smoke.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "ok: profile 'smoke'" in ok.stdout


def test_validate_subset_checks_only_given_keys() -> None:
    stages = yaml.safe_load((REPO / "params" / "smoke.yaml").read_text())["stages"]
    out = config.validate_subset(seed=3, stages=stages, profile_repeats=2)
    assert out["seed"] == 3
    assert isinstance(out["stages"][0], config.StageConfig)
    with pytest.raises(ConfigError, match="'bogus': unknown key"):
        config.validate_subset(bogus=1)
    with pytest.raises(ConfigError, match="'lambdas"):
        config.validate_subset(lambdas=[1.0, -2.0])


def test_digest_is_stable_and_sensitive() -> None:
    a = config.load([BASE, REPO / "params" / "cpu.yaml"])
    b = config.load([BASE, REPO / "params" / "cpu.yaml"])
    c = config.validate({**a.model_dump(), "seed": 1})
    assert a.digest() == b.digest() != c.digest()
