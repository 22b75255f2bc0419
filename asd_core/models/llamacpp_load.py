"""Loading GGUF weights into llama.cpp, and which of its CPU weight layouts are safe here.

llama.cpp's CPU backend may place weights in "extra" buffer types: Intel AMX tiles, or layouts
repacked for wide SIMD. On a CPU that advertises AMX inside a virtual machine that does not grant
the AMX tile state, every batch of more than one token crashes the process (SIGSEGV in
``ggml_backend_amx_mul_mat``; measured with llama-cpp-python 0.3.36 on an Intel Xeon VM whose
``/proc/cpuinfo`` lists ``amx_tile``). So where AMX is advertised the weights stay in the plain
CPU buffers (AVX-512 kernels still run); elsewhere llama.cpp chooses. ``ASD_LLAMA_EXTRA_BUFFERS``
= 1 or 0 overrides the choice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_lib


def extra_buffers_allowed(cpuinfo: str | None = None) -> bool:
    """Whether weights may go to llama.cpp's extra CPU buffer types on this machine."""
    forced = os.environ.get("ASD_LLAMA_EXTRA_BUFFERS")
    if forced in ("0", "1"):
        return forced == "1"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return True  # not Linux: nothing known against them
    return "amx_tile" not in cpuinfo.split()


@contextmanager
def weight_buffers(extra_buffers: bool) -> Iterator[None]:
    """The wrapper's ``Llama`` builds its model parameters from llama.cpp's defaults and exposes
    no ``use_extra_bufts``: set it on those defaults while the model loads."""
    original = llama_lib.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = extra_buffers
        return params

    llama_lib.llama_model_default_params = defaults
    try:
        yield
    finally:
        llama_lib.llama_model_default_params = original


def load_llama(weights: str, **kwargs: Any) -> Any:
    """``llama_cpp.Llama`` on a local GGUF file or a hub ``repo:file.gguf``."""
    with weight_buffers(extra_buffers_allowed()):
        if Path(weights).is_file():
            return llama_cpp.Llama(weights, **kwargs)
        repo, filename = weights.split(":", 1)
        return llama_cpp.Llama.from_pretrained(repo, filename, **kwargs)
