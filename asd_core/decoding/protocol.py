"""The interface between an executor and a policy: the decisions and what a policy may see.

A policy has two decisions, both batched:

* ``entry(requests) -> list[int]``: the starting stage of each input, from the input alone;
* ``next_stage(stage, paths) -> list[Move | None]``: after ``stage`` ran on these inputs, None to
  stop and return its output, or a :class:`Move` to a deeper stage (skipping the ones between),
  which either continues the current output (verify it, decode the rest) or restarts.

The online pipeline and replay over cached generations both drive policies through this
interface only; policies see inputs and paths through the small protocols here (an item id, a
task, the stages that ran and how), so they never depend on either executor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from asd_core.ground import belief, stopping

Move = stopping.Decision  # (deeper stage, restart?): how a path goes on


def continue_to(stage: int) -> Move:
    """Go to ``stage`` by verifying the current output and decoding the rest (lossless)."""
    return Move(stage, False)


class RequestLike(Protocol):
    """What a policy sees of an input."""

    @property
    def item_id(self) -> str: ...

    @property
    def task(self) -> str: ...

    @property
    def text(self) -> str: ...


class RunLike(Protocol):
    """What a policy sees of one stage's run on an input."""

    @property
    def stage(self) -> int: ...

    @property
    def from_stage(self) -> int | None: ...  # stage whose draft it verified; None from scratch


class PathLike(Protocol):
    """What a policy sees of an input's way through the hierarchy so far."""

    @property
    def request(self) -> RequestLike: ...

    @property
    def runs(self) -> Sequence[RunLike]: ...


def view_of(run: RunLike) -> int:
    """SEQUENTIAL when the stage verified the stage right below it, else DIRECT."""
    sequential = run.from_stage is not None and run.from_stage == run.stage - 1
    return belief.SEQUENTIAL if sequential else belief.DIRECT


@runtime_checkable
class Policy(Protocol):
    """The decision interface of the pipeline and of replay."""

    name: str  # label used in traces, tables and progress bars

    def entry(self, requests: Sequence[RequestLike]) -> list[int]:
        """Starting stage of each request."""
        ...

    def next_stage(self, stage: int, paths: Sequence[PathLike]) -> list[Move | None]:
        """After ``stage``: None to stop, or a move to a deeper stage, per input."""
        ...
