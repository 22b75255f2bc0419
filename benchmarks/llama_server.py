"""llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``), loading the
weights into the same CPU buffers as the project's llama.cpp stages
(:mod:`asd_core.models.llamacpp_load`: no AMX tiles where they crash), so that the load benchmark
compares the two servers on the same kernels. Arguments are the server's own.
"""

from __future__ import annotations

import runpy

from asd_core.models.llamacpp_load import extra_buffers_allowed, weight_buffers


def main() -> None:
    with weight_buffers(extra_buffers_allowed()):
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
