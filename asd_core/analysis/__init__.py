"""Analysis layer: summaries, curve statistics, tables and figures of the notebooks."""
