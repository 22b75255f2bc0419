"""Live costs: the latencies a server observes move the policy's costs (docs/design.md §15).

The fitted costs describe the machine and load they were measured on. While serving, every stage
run is compared with what the fitted per-input cost model predicts for that input (its prompt and
output lengths): the ratio observed ÷ predicted, per stage doing the work, is averaged with an
exponential moving average. Costs are normalised by the deepest stage, so only the factors
relative to the deepest stage's change decisions; when one of them has moved by more than a set
fraction since the tables were last solved, :meth:`CostTracker.model_now` returns the policy
model with every cost of stage ``j`` scaled by its factor, for the tables to be solved again.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from asd_core.ground import belief
from asd_core.ground.errors import AsdError
from asd_core.policy.costs import InputCostModel
from asd_core.policy.fitting import PolicyModel


def _scaled(costs: belief.Costs, factor: np.ndarray) -> belief.Costs:
    """Costs of moves into stage ``j`` times ``factor[j]`` (shape (K,))."""
    return belief.Costs(costs.scratch * factor, costs.resume * factor[None, None, :, None])


def rescaled(model: PolicyModel, factor: np.ndarray) -> PolicyModel:
    """``model`` with every cost of work done by stage ``j`` multiplied by ``factor[j]``.

    ``factor`` (K,) > 0 is relative to the deepest stage (``factor[-1]`` = 1 keeps the tables'
    unit: the deepest stage alone costs 1).
    """
    factor = np.asarray(factor, dtype=float)
    if factor.shape != (model.n_stages,) or not np.all(np.isfinite(factor) & (factor > 0)):
        raise AsdError(f"cost factors must be {model.n_stages} positive numbers, got {factor}")
    held = model.held_out
    inputs = model.input_costs
    if inputs is not None:
        inputs = dataclasses.replace(
            inputs,
            scratch_coef=inputs.scratch_coef * factor[:, None],
            verify_coef=inputs.verify_coef * factor[:, None],
        )
    return dataclasses.replace(
        model,
        costs=_scaled(model.costs, factor),
        task_costs={t: _scaled(c, factor) for t, c in model.task_costs.items()},
        held_out=dataclasses.replace(
            held, scratch=held.scratch * factor, resume=held.resume * factor[None, None, :]
        ),
        scratch_s=model.scratch_s * factor,
        escalate_s=model.escalate_s * factor[None, :],
        input_costs=inputs,
    )


def predicted_cost(
    costs: InputCostModel, stage: int, task: str, n_in: float, known: dict[int, float],
    from_stage: int | None,
) -> float:  # fmt: skip
    """What the fitted model expects stage ``stage``'s run on this input to cost (cost units).

    From scratch when ``from_stage`` is None, else continuing ``from_stage``'s draft.
    """
    row = 0 if from_stage is None else from_stage + 1
    return float(costs.matrix(task, n_in, known)[row, stage] * costs.norm)


@dataclasses.dataclass
class CostTracker:
    """Exponential moving averages of observed ÷ predicted cost per stage, and when to re-solve."""

    model: PolicyModel  # as fitted: predictions are always made with its costs
    rate: float = 0.1  # weight of a new observation in the average, (0, 1]
    resolve_fraction: float = 0.2  # re-solve when a relative factor moved by more than this
    factors: np.ndarray = dataclasses.field(init=False)  # (K,) EMA of observed / predicted
    seconds: np.ndarray = dataclasses.field(init=False)  # (K,) EMA of observed seconds per run
    runs: np.ndarray = dataclasses.field(init=False)  # (K,) runs observed
    solved_at: np.ndarray = dataclasses.field(init=False)  # (K,) relative factors last solved
    resolves: int = 0  # times the tables were re-solved

    def __post_init__(self) -> None:
        if self.model.input_costs is None:
            raise AsdError("live costs need a policy model with a per-input cost model")
        if not 0.0 < self.rate <= 1.0:
            raise AsdError(f"cost_ema_rate must be in (0, 1], got {self.rate}")
        if not self.resolve_fraction > 0.0:
            raise AsdError(f"cost_resolve_fraction must be > 0, got {self.resolve_fraction}")
        K = self.model.n_stages
        self.factors = np.ones(K)
        self.seconds = np.full(K, math.nan)
        self.runs = np.zeros(K, dtype=np.int64)
        self.solved_at = np.ones(K)

    def observe(
        self, stage: int, task: str, n_in: float, known: dict[int, float], seconds: float,
        from_stage: int | None = None,
    ) -> None:  # fmt: skip
        """Fold in one run of ``stage`` that took ``seconds`` (wall clock, its share of a batch)."""
        assert self.model.input_costs is not None
        predicted = predicted_cost(self.model.input_costs, stage, task, n_in, known, from_stage)
        if not (predicted > 0 and math.isfinite(seconds) and seconds > 0):
            return
        a = self.rate
        self.factors[stage] = (1 - a) * self.factors[stage] + a * seconds / predicted
        old = self.seconds[stage]
        self.seconds[stage] = seconds if math.isnan(old) else (1 - a) * old + a * seconds
        self.runs[stage] += 1

    def relative(self) -> np.ndarray:
        """(K,) factors relative to the deepest stage's (what decisions depend on)."""
        return self.factors / self.factors[-1]

    def stale(self) -> bool:
        """A relative factor moved by more than ``resolve_fraction`` since the last solve."""
        moved = np.abs(self.relative() / self.solved_at - 1.0)
        return bool(np.any(moved > self.resolve_fraction))

    def model_now(self) -> PolicyModel:
        """The policy model with the current factors (and remember them as solved)."""
        self.solved_at = self.relative()
        self.resolves += 1
        return rescaled(self.model, self.solved_at)

    def current_costs(self) -> np.ndarray:
        """(K,) cost of each stage from scratch in the tables' unit, under the current factors."""
        return np.asarray(self.model.costs.scratch) * self.relative()
