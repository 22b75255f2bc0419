"""Evaluation: a sandbox for generated code and the per-task quality metrics (DESIGN §10, §12)."""
