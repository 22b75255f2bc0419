"""The package's layers import downwards only, and only ``models/`` touches a model runtime.

Reads every module's imports with :mod:`ast` (nothing is imported), so a violation fails here
with the file, the line and both layers, before it can become a cycle somewhere else.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lowest first: a module may import its own layer and the ones before it, never one after.
LAYERS = (
    "ground",  # errors, config, files, stats, the stopping recursion, provenance
    "models",  # backends over the runtimes
    "data",  # tasks, loaders, splits, pools, scoring, sandbox
    "learning",  # features, predictor, calibration
    "decoding",  # the policy interface, verification, the pipeline
    "policy",  # costs, beliefs, the adaptive policy, reference policies
    "runs",  # profiling, data generation, replay, evaluation, online checks
    "analysis",  # figures and tables
    "reporting",  # run log, report index, the notebook runner
    "serve",  # the server: settings, engine and scheduler, cache manager, metrics, API, demo
)
RUNTIMES = {"llama_cpp", "vllm", "transformers", "torchvision", "torchaudio"}
RUNTIME_LAYERS = {"models"}  # plus benchmarks/, which compare the runtimes themselves


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # ``from asd_core import runs`` names a layer through its parent
            if node.module == "asd_core":
                found += [(node.lineno, f"asd_core.{a.name}") for a in node.names]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "asd_core" or len(parts) < 2:
        return None
    return parts[1]


def violations(root: Path = REPO) -> list[str]:
    """One line per import that goes up a layer, leaves the layers, or reaches a runtime."""
    found = []
    package = root / "asd_core"
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(root)
        parts = path.relative_to(package).parts
        if len(parts) == 1:
            if path.name != "__init__.py":
                found.append(f"{rel}: a module outside every layer")
            continue
        own = parts[0]
        if own not in LAYERS:
            found.append(f"{rel}: '{own}' is not a layer")
            continue
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in RUNTIMES and own not in RUNTIME_LAYERS:
                found.append(f"{rel}:{line}: imports the runtime '{module}' outside models/")
            target = _layer(module)
            if target is None:
                continue
            if target not in LAYERS:
                found.append(f"{rel}:{line}: imports '{module}', which is in no layer")
            elif LAYERS.index(target) > LAYERS.index(own):
                found.append(f"{rel}:{line}: {own} imports {target} ('{module}'), a higher layer")
    return found


def test_layers_import_downwards_only() -> None:
    assert violations() == []


def test_the_check_catches_an_upward_import_and_a_runtime(tmp_path: Path) -> None:
    """The check itself can fail: a fake tree with one of each violation."""
    for rel, text in {
        "asd_core/__init__.py": "",
        "asd_core/ground/__init__.py": "",
        "asd_core/ground/low.py": "from asd_core.runs import evaluate\n",
        "asd_core/data/tasks.py": "import vllm\nfrom asd_core.ground import low\n",
        "asd_core/stray.py": "",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = violations(tmp_path)
    assert any("ground imports runs" in v for v in found)
    assert any("runtime 'vllm'" in v for v in found)
    assert any("stray.py: a module outside every layer" in v for v in found)
    assert not any("data/tasks.py:2" in v for v in found)  # downwards is fine


@pytest.mark.parametrize("name", ["benchmarks"])
def test_the_core_never_imports_the_benchmarks(name: str) -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}"
        for path in sorted((REPO / "asd_core").rglob("*.py"))
        for line, module in _imports(path)
        if module.split(".")[0] == name
    ]
    assert offenders == []


MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
REASON = "Long because"  # a longer function says why, on a docstring line starting so


def size_violations(root: Path = REPO) -> list[str]:
    """Modules over MAX_MODULE_LINES, functions over MAX_FUNCTION_LINES without a reason."""
    found = []
    for path in sorted([*(root / "asd_core").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]):
        rel = path.relative_to(root)
        text = path.read_text(encoding="utf-8")
        n_lines = len(text.splitlines())
        if n_lines > MAX_MODULE_LINES:
            found.append(f"{rel}: {n_lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            reasoned = any(line.strip().startswith(REASON) for line in doc.splitlines())
            if length > MAX_FUNCTION_LINES and not reasoned:
                found.append(f"{rel}:{node.lineno} {node.name}: {length} lines and no reason")
    return found


def test_modules_and_functions_are_short_or_say_why() -> None:
    assert size_violations() == []


def test_the_size_check_can_fail(tmp_path: Path) -> None:
    long_body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (tmp_path / "asd_core").mkdir()
    (tmp_path / "asd_core" / "big.py").write_text(
        f"def long():\n{long_body}\n\n\ndef reasoned():\n"
        f'    """Does a lot.\n\n    Long because: one table, one row per line.\n    """\n{long_body}\n'
        + "\n"
        * 400
    )
    found = size_violations(tmp_path)
    assert any("big.py:1 long: 71 lines and no reason" in v for v in found)
    assert not any("reasoned" in v for v in found)
    assert any("lines (at most 500)" in v for v in found)
