"""Shared fixtures: a models folder reused across the session, tiny stages, real-weight skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from asd_core.ground.config import StageConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The project's models folder (embedded weights are assembled here once by set-up)."""
    return Path(os.environ.get("ASD_MODELS_DIR", REPO / "models"))


@pytest.fixture(scope="session")
def tiny_stage() -> StageConfig:
    return StageConfig(
        name="tiny",
        source="tiny:layers:2,hidden:64,seed:1",
        runtime="transformers",
        dtype="float32",
        context_length=1024,
    )


@pytest.fixture(scope="session")
def tiny_backend(tiny_stage: StageConfig, tmp_path_factory: pytest.TempPathFactory):
    from asd_core.models.registry import load_backend

    backend = load_backend(tiny_stage, tmp_path_factory.mktemp("models"))
    yield backend
    backend.close()


def real_gguf(models_dir: Path, asset_name: str) -> Path:
    """Path of an embedded GGUF, or skip when set-up has not assembled it."""
    from asd_core.models import assets

    path = assets.gguf_path(models_dir, assets.get_asset(asset_name))
    if not path.is_file():
        pytest.skip(f"{path} not assembled (run `./run_all.sh test` or fetch the assets)")
    return path
