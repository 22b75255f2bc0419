"""Side-by-side measurements outside the core package (run as ``python -m benchmarks.<name>``); they may import the runtimes."""
