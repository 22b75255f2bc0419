"""Serve the adaptive pipeline: ``python -m asd_core.serve --config params/serving.yaml``.

Loads the policy file (refused at start when it was fitted for other stages or features), then
each stage's model once, and serves the OpenAI-compatible API with uvicorn. Requests and errors
are logged to the console and to the serving file's ``log_file``. SIGTERM or Ctrl-C: no new
connections, the requests in flight are answered, then the models are freed and the process exits.
"""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Sequence

from asd_core.ground.errors import AsdError, cli_entry
from asd_core.ground.files import repo_path
from asd_core.serve.settings import ServingSettings, load_settings

log = logging.getLogger("asd_core.serve")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: ServingSettings) -> None:
    """The server's records (ours and uvicorn's) to the console and to ``log_file``."""
    path = repo_path(settings.log_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(), logging.FileHandler(path)]
    for h in handlers:
        h.setFormatter(formatter)
    for name in ("asd_core", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(settings.log_level)
        logger.propagate = False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one, reported in the log)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AsdError(
            f"keys 'host', 'port': cannot listen on {host}:{port} ({exc.strerror})"
        ) from None
    return sock


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m asd_core.serve", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--config", default="params/serving.yaml", help="serving parameter file")
    ap.add_argument("--host", help="overrides the file's host")
    ap.add_argument("--port", type=int, help="overrides the file's port (0: a free one)")
    ap.add_argument("--policy-file", help="overrides the file's policy_file")
    args = ap.parse_args(argv)
    overrides = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "policy_file": args.policy_file}.items()
        if v is not None
    }
    settings = load_settings(args.config, **overrides)
    configure_logging(settings)
    import uvicorn  # the web stack loads only once the settings are known to be good

    from asd_core.serve.app import create_app
    from asd_core.serve.engine import Engine

    sock = bind(settings.host, settings.port)  # before the models load: a taken port fails fast
    engine = Engine(settings)
    host, port = sock.getsockname()[:2]
    log.info(
        "serving %s (%s) on http://%s:%d",
        settings.model_name,
        " → ".join(engine.stage_names),
        host,
        port,
    )
    config = uvicorn.Config(
        create_app(engine),
        log_config=None,  # ours (configure_logging)
        access_log=False,  # one line per request comes from the app, with its depth and path
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
