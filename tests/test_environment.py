"""The environment never carries a CUDA build of torch on a CPU machine."""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_torch_requirement_is_pinned_exactly() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    torch_reqs = [r for r in reqs if re.match(r"^torch\b", r)]
    assert torch_reqs == ["torch==2.13.0"], torch_reqs


@pytest.mark.skipif(
    shutil.which("nvidia-smi") is not None, reason="GPU machine: CUDA torch is wanted"
)
def test_installed_torch_is_the_cpu_build() -> None:
    import torch

    assert torch.__version__ == "2.13.0+cpu", torch.__version__
    assert torch.version.cuda is None
    cuda_dists = sorted(
        d.metadata["Name"]
        for d in md.distributions()
        if (d.metadata["Name"] or "").lower().startswith(("nvidia-", "triton"))
        # NVML's pure-Python binding (the run log's GPU samples) carries no CUDA library
        and (d.metadata["Name"] or "").lower() != "nvidia-ml-py"
    )
    assert not cuda_dists, f"CUDA packages were pulled in: {cuda_dists}"


def test_no_cuda_only_companions_break_vllm() -> None:
    """torchvision/torchaudio/torchcodec only exist as CUDA builds here and break `import vllm`."""
    present = []
    for name in ("torchvision", "torchaudio", "torchcodec"):
        try:
            md.version(name)
            present.append(name)
        except md.PackageNotFoundError:
            pass
    if shutil.which("nvidia-smi") is None:
        assert not present, f"remove {present}: CUDA builds that break vLLM on CPU"
