"""One file holding a fitted policy: what notebook 03 writes and notebook 04 and the server load.

The file (``policy.pt``) is a ``torch.save`` of plain dicts, lists, strings, numbers and
tensors, read back with ``weights_only=True`` (no pickled code runs on load). It holds the
predictor (ensemble and input-only heads with their calibration), the risk settings and priors,
the belief model, the costs (pooled, per task and per held-out input), the held-out inputs the
entry decision compares with, the per-input cost model, the stage list and generation settings it
was fitted for, and the provenance of the run that fitted it. λ is not in it: a policy for any λ
is solved from these at load time (milliseconds).

:func:`load_policy` refuses, with one line naming the field, a file of another format or one fitted
for other stages, features or labels than the caller expects.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asd_core.ground import belief, stopping
from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.ground.files import atomic_write_bytes
from asd_core.ground.provenance import write_bytes
from asd_core.learning.features import FeatureSet
from asd_core.learning.predictor import QualityPredictor, check_description
from asd_core.policy.costs import InputCostModel
from asd_core.policy.fitting import PolicyModel, RiskSettings

POLICY_FORMAT = "asd-policy/1"  # bump when the layout below changes
STAGE_FIELDS = ("name", "source")  # what must match between the file and the stages serving it


@dataclass
class SavedPolicy:
    """A policy file's content: the model and what it was fitted for."""

    model: PolicyModel  # everything the DP needs, for any λ
    stages: list[dict[str, Any]]  # the stage configs it was fitted on, cheapest first
    generation: dict[str, dict[str, Any]] = field(default_factory=dict)  # task → budget, stops
    provenance: dict[str, Any] = field(default_factory=dict)  # the fitting run's sidecar fields

    @property
    def stage_names(self) -> list[str]:
        return [str(s["name"]) for s in self.stages]


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars made Python numbers (what ``weights_only`` loading allows)."""

    def convert(x: Any) -> Any:
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
        return str(x)

    return json.loads(json.dumps(value, default=convert))


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float64))


def _array(t: Any) -> np.ndarray:
    return np.asarray(t.numpy() if isinstance(t, torch.Tensor) else t, dtype=float)


def _costs_state(c: belief.Costs) -> dict[str, torch.Tensor]:
    return {"scratch": _tensor(c.scratch), "resume": _tensor(c.resume)}


def _costs(state: Mapping[str, Any]) -> belief.Costs:
    return belief.Costs(_array(state["scratch"]), _array(state["resume"]))


def _input_costs_state(m: InputCostModel | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "scratch_coef": _tensor(m.scratch_coef),
        "verify_coef": _tensor(m.verify_coef),
        "accepted_share": _tensor(m.accepted_share),
        "n_out_mean": [[str(t), int(k), float(v)] for (t, k), v in m.n_out_mean.items()],
        "n_out_default": _tensor(m.n_out_default),
        "norm": float(m.norm),
    }


def _input_costs(state: Mapping[str, Any] | None) -> InputCostModel | None:
    if state is None:
        return None
    return InputCostModel(
        scratch_coef=_array(state["scratch_coef"]),
        verify_coef=_array(state["verify_coef"]),
        accepted_share=_array(state["accepted_share"]),
        n_out_mean={(str(t), int(k)): float(v) for t, k, v in state["n_out_mean"]},
        n_out_default=_array(state["n_out_default"]),
        norm=float(state["norm"]),
    )


def policy_state(
    model: PolicyModel,
    stages: Sequence[StageConfig],
    generation: Mapping[str, Mapping[str, Any]] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict :func:`save_policy` writes (plain containers and tensors only)."""
    if len(stages) != model.n_stages:
        raise AsdError(f"policy file: {len(stages)} stages given, the model has {model.n_stages}")
    meta, tensors = model.predictor.state()
    b, held = model.beliefs, model.held_out
    return {
        "format": POLICY_FORMAT,
        "stages": [s.model_dump() for s in stages],
        "feature_version": model.predictor.features.version,
        "feature_names": list(model.predictor.features.names),
        "label_mode": model.predictor.label_mode,
        "generation": _plain({t: dict(g) for t, g in (generation or {}).items()}),
        "provenance": _plain(dict(provenance or {})),
        "predictor": {"meta": _plain(meta), "tensors": tensors},
        "risk": _plain(asdict(model.risk)),
        "prior": _tensor(model.prior),
        "beliefs": {
            "edges": _tensor(b.edges),
            "pbar": _tensor(b.pbar),
            "moves": _tensor(b.moves),
            "counts": None if b.counts is None else _tensor(b.counts),
        },
        "costs": _costs_state(model.costs),
        "task_costs": {str(t): _costs_state(c) for t, c in model.task_costs.items()},
        "held_out": {
            "head": _tensor(held.head),
            "bins": torch.tensor(np.asarray(held.bins, dtype=np.int64)),
            "labels": _tensor(held.labels),
            "scratch": _tensor(held.scratch),
            "resume": _tensor(held.resume),
            "tasks": None if held.tasks is None else [str(t) for t in held.tasks],
        },
        "scratch_s": _tensor(model.scratch_s),
        "escalate_s": _tensor(model.escalate_s),
        "neighbours": int(model.neighbours),
        "input_costs": _input_costs_state(model.input_costs),
        "info": _plain(dict(model.info)),
    }


def save_policy(
    model: PolicyModel,
    path: str | Path,
    stages: Sequence[StageConfig],
    generation: Mapping[str, Mapping[str, Any]] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write the policy file atomically (a killed save leaves the previous file); return ``path``.

    With ``provenance`` a sidecar ``<path>.provenance.json`` is written next to it, and the
    provenance is also kept inside the file (a server reports which commit fitted its policy).
    """
    plain = _plain(dict(provenance or {}))
    buf = io.BytesIO()
    torch.save(policy_state(model, stages, generation, plain), buf)
    path = Path(path)
    if provenance is None:
        atomic_write_bytes(path, buf.getvalue())
    else:
        write_bytes(buf.getvalue(), path, plain)
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AsdError(f"{path}: policy file not found (notebook 03 writes it)") from None
    try:
        state = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not its own
        raise AsdError(f"{path}: not a policy file ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != POLICY_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise AsdError(f"{path}: field 'format' is {found!r}, this code reads {POLICY_FORMAT!r}")
    return state


def check_stages(
    where: str | Path, saved: Sequence[Mapping[str, Any]], stages: Sequence[Any]
) -> None:
    """One line naming the first stage field where the file and ``stages`` differ."""
    wanted = [s.model_dump() if isinstance(s, StageConfig) else dict(s) for s in stages]
    if len(saved) != len(wanted):
        raise AsdError(
            f"{where}: field 'stages' has {len(saved)} stages in the policy file, "
            f"{len(wanted)} here"
        )
    for i, (a, b) in enumerate(zip(saved, wanted, strict=True)):
        for key in STAGE_FIELDS:
            if a.get(key) != b.get(key):
                raise AsdError(
                    f"{where}: field 'stages[{i}].{key}' is {a.get(key)!r} in the policy file, "
                    f"{b.get(key)!r} here"
                )


def load_policy(
    path: str | Path,
    stages: Sequence[Any] | None = None,
    label_mode: str | None = None,
) -> SavedPolicy:
    """Read a policy file; refuse one fitted for other stages, features or labels.

    ``stages`` (StageConfig or dicts) are compared by name and source; the features are this
    code's own (:class:`~asd_core.learning.features.FeatureSet`), compared name by name and by
    version.
    """
    path = Path(path)
    s = _read(path)
    if stages is not None:
        check_stages(path, s["stages"], stages)
    K = len(s["stages"])
    pred_meta = s["predictor"]["meta"]
    check_description(
        path, pred_meta, FeatureSet(K, use_hidden=bool(pred_meta["use_hidden"])), label_mode
    )
    predictor = QualityPredictor.from_state(path, pred_meta, s["predictor"]["tensors"])
    b, h = s["beliefs"], s["held_out"]
    model = PolicyModel(
        predictor=predictor,
        risk=RiskSettings(**s["risk"]),
        prior=_array(s["prior"]),
        beliefs=belief.BeliefModel(
            _array(b["edges"]),
            _array(b["pbar"]),
            _array(b["moves"]),
            None if b["counts"] is None else _array(b["counts"]),
        ),
        costs=_costs(s["costs"]),
        task_costs={str(t): _costs(c) for t, c in s["task_costs"].items()},
        held_out=stopping.HeldOut(
            _array(h["head"]),
            h["bins"].numpy().astype(np.intp),
            _array(h["labels"]),
            _array(h["scratch"]),
            _array(h["resume"]),
            None if h["tasks"] is None else np.asarray(h["tasks"], dtype=str),
        ),
        scratch_s=_array(s["scratch_s"]),
        escalate_s=_array(s["escalate_s"]),
        neighbours=int(s["neighbours"]),
        input_costs=_input_costs(s["input_costs"]),
        info=dict(s["info"]),
    )
    if not math.isfinite(float(model.scratch_s[-1])):
        raise AsdError(f"{path}: field 'scratch_s' has no finite cost for the deepest stage")
    return SavedPolicy(model, list(s["stages"]), dict(s["generation"]), dict(s["provenance"]))
