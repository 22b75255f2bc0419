"""The notebook runner: layered params reach the notebook; a failure names the cell and keeps
the previous good run."""

from __future__ import annotations

import io
from pathlib import Path

import nbformat
import pytest

from asd_core.ground.errors import AsdError, ConfigError
from asd_core.reporting import notebooks as notebooks_module
from asd_core.reporting.notebooks import LogLines, is_complete, run_notebook


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


def test_a_complete_notebook_is_recognised_and_a_change_undoes_it(layout) -> None:
    notebooks, files, out = layout
    _notebook(notebooks, "nb", "print('run')")
    assert not is_complete("nb", files, out, notebooks)
    run_notebook("nb", files, out, notebooks)
    assert is_complete("nb", files, out, notebooks)
    files[0].write_text(files[0].read_text().replace("seed: 7", "seed: 8"))
    assert not is_complete("nb", files, out, notebooks)  # other parameters
    run_notebook("nb", files, out, notebooks)
    _notebook(notebooks, "nb", "print('changed')")
    assert not is_complete("nb", files, out, notebooks)  # another notebook


def test_kernel_stderr_keeps_log_lines_and_drops_progress_bars() -> None:
    out = io.StringIO()
    sink = LogLines(out)
    sink.write("12:00:01 asd_core.runs.datagen: generations: 8/16 items (50%)\n")
    sink.write("\rgenerations:  50%|#####     | 8/16\rgenerations: 100%|##########| 16/16\n")
    sink.write("\rfitting:   0%|          | 0/25 [00:00<?, ?it/s]")  # a record glued to a bar
    sink.write("12:00:05 asd_core.runs.evaluate: fitting: 1/25 folds × seeds (4%)\n")
    sink.write("12:00:09 asd_core.runs.datagen: generations: 16/16")
    assert out.getvalue().splitlines() == [
        "12:00:01 asd_core.runs.datagen: generations: 8/16 items (50%)",
        "12:00:05 asd_core.runs.evaluate: fitting: 1/25 folds × seeds (4%)",
    ]
    sink.write(" items (100%)\n")
    assert out.getvalue().splitlines()[-1].endswith("16/16 items (100%)")


def test_a_committed_profile_refuses_a_dirty_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notebooks_module, "dirty_files", lambda: ["asd_core/x.py"])
    monkeypatch.delenv("ASD_ALLOW_DIRTY", raising=False)
    with pytest.raises(AsdError, match=r"profile 'cpu': uncommitted changes .*asd_core/x\.py"):
        notebooks_module.check_clean("cpu")
    notebooks_module.check_clean("smoke")  # scratch results are never committed
    monkeypatch.setenv("ASD_ALLOW_DIRTY", "1")
    notebooks_module.check_clean("cpu")
    monkeypatch.setattr(notebooks_module, "dirty_files", lambda: [])
    monkeypatch.delenv("ASD_ALLOW_DIRTY")
    notebooks_module.check_clean("cpu")
