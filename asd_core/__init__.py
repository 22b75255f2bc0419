"""asd: adaptive speculative decoding over a hierarchy of language models."""

import os

# torch's CPU matmuls go through oneMKL, which by default may pick kernels and reduction orders
# by memory alignment and run-time dispatch, so the same inputs can round differently in two
# processes (a resumed data generation would then not reproduce an uninterrupted one). Its
# conditional-reproducibility mode fixes both for a given CPU and thread count; oneMKL reads the
# variable at its first call, so this must come before any torch work. A user's value wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
