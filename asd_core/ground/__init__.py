"""Ground layer: errors, parameters, atomic files, provenance, statistics, curves, belief states and the stopping recursion. Imports nothing of ours."""
