"""The notebook runner: layered params reach the notebook; a failure names the cell and keeps
the previous good run."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from asd_core.ground.errors import AsdError, ConfigError
from asd_core.reporting.notebooks import run_notebook


def _notebook(folder: Path, name: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("seed = 0  # master seed")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, folder / f"{name}.ipynb")


@pytest.fixture()
def layout(tmp_path: Path) -> tuple[Path, list[Path], Path]:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    base = tmp_path / "base.yaml"
    base.write_text(
        "profile: t\nseed: 7\nlambdas: [1.0]\n"
        "stages:\n  - {name: a, source: 'tiny:layers:1', runtime: transformers}\n"
        "datagen_max_new_tokens: {mmlu: 4, humaneval: 4, asdiv: 4, truthfulqa: 4}\n"
    )
    return notebooks, [base], tmp_path / "runs"


def test_parameters_are_injected_and_html_exported(layout) -> None:
    notebooks, files, out = layout
    _notebook(notebooks, "ok", "assert seed == 7, seed\nprint('seed', seed)")
    executed = run_notebook("ok", files, out, notebooks)
    assert executed == out / "ok.ipynb"
    assert "seed 7" in executed.read_text()
    assert (out / "ok.html").stat().st_size > 1000


def test_failure_names_cell_and_keeps_previous_run(layout) -> None:
    notebooks, files, out = layout
    _notebook(notebooks, "nb", "print('good run')")
    run_notebook("nb", files, out, notebooks)
    good = (out / "nb.ipynb").read_text()
    _notebook(notebooks, "nb", "raise ValueError('boom')")
    with pytest.raises(AsdError, match=r"notebook nb failed in cell \d+.*ValueError: boom"):
        run_notebook("nb", files, out, notebooks)
    assert (out / "nb.ipynb").read_text() == good  # the good run is not overwritten
    assert (out / "nb.failed.ipynb").is_file()


def test_bad_params_stop_before_running(layout, tmp_path: Path) -> None:
    notebooks, files, out = layout
    _notebook(notebooks, "nb", "print(1)")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lambdas: [0]\n")
    with pytest.raises(ConfigError, match="lambdas"):
        run_notebook("nb", [*files, bad], out, notebooks)
    assert not out.exists()
    with pytest.raises(AsdError, match="notebook not found"):
        run_notebook("missing", files, out, notebooks)
