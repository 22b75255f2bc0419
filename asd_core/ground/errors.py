"""One error type for every mistake a user can make, printed as one line by the CLIs."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class AsdError(Exception):
    """A user-facing error: bad parameters, a missing or corrupted file, impossible input.

    The message is a single line that names the offending key or file; CLIs print it without
    a traceback and exit with status 2.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class ConfigError(AsdError):
    """Malformed, unknown or impossible parameter values."""


class AssetError(AsdError):
    """A model file that is missing, incomplete or fails its checksum."""


class MetricsError(AsdError):
    """An unknown task, or an item without the fields its task is scored with."""


def cli_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a CLI ``main``: library messages are logged to stderr at INFO, and an
    :class:`AsdError` becomes one stderr line and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> T:
        from asd_core.ground import (
            logs,  # errors is the lowest module: logs imports nothing of ours
        )

        if not logging.getLogger("asd_core").handlers:
            logs.configure("INFO", logs.CLI_FORMAT)
        try:
            return main(*args, **kwargs)
        except AsdError as err:
            print(f"asd: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
