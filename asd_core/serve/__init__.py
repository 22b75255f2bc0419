"""Serving the adaptive pipeline: an OpenAI-compatible server (``python -m asd_core.serve``)."""
