"""Reporting layer: the notebook runner, the run log and the report index."""
