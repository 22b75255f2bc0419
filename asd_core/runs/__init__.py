"""Runs layer: profiling, data generation, cross-fitting, the evaluation methods and runner, replay, the online check."""
