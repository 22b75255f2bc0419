"""The quality predictor: P(accept_k | what stage k produced), with uncertainty (DESIGN §5).

One member is a small MLP: standardised features → a shared trunk (e.g. 2×64, ReLU, dropout) →
one logit per stage; a row of stage k is trained and read on head k only. Members are trained
with BCE + AdamW and stopped early on the calibration split; a deep ensemble of members with
seeds derived from one run seed gives the mean p̂ and the variance across members (the
uncertainty the risk adjustment of §6 shrinks). The ensemble mean is then calibrated per stage
on the calibration split (temperature scaling by default, isotonic regression as an option).

A second ensemble, the input-only head, reads prompt features alone (prompt length, tail
entropy, task; the prompt as stage ``input_stage`` tokenises it) and predicts P(accept_k) for
every k before any model runs: the entry decision of §7 uses it.

Training runs in torch on one CPU thread (deterministic for a seed); prediction runs the same
weights in numpy, which for one input is an order of magnitude faster than torch's dispatch.
A saved predictor is two files written atomically: ``<name>.pt`` (state dicts, hidden PCA)
and ``<name>.json`` (feature names and version, label mode, config, calibration, the sha256
of the ``.pt``); loading against a different feature list is refused with one line.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from torch import nn
from torch.nn import functional as F

from asd_core.ground.errors import AsdError
from asd_core.ground.files import atomic_write_bytes, atomic_write_text
from asd_core.learning.features import FeatureSet, HiddenPCA, StageView

LabelMode = Literal["answer", "token"]
CalibrationMethod = Literal["temperature", "isotonic", "none"]
LABEL_COLUMNS: dict[str, str] = {"answer": "label_answer", "token": "label_token"}
FILE_FORMAT = 1  # bump when the saved layout changes
_P_CLIP = 1e-6  # probabilities are kept in [clip, 1 − clip] before taking logits


@dataclass(frozen=True)
class TrainConfig:
    """How to train both ensembles (the output predictor and the input-only head)."""

    hidden_sizes: tuple[int, ...] = (64, 64)  # widths of the shared trunk's layers
    dropout: float = 0.1  # dropout after each trunk layer, training only
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    batch_size: int = 128  # rows per optimiser step
    max_epochs: int = 200  # upper bound on passes over the training split
    patience: int = 10  # epochs without a lower calibration-split BCE before stopping
    n_members: int = 5  # deep-ensemble size
    calibration: CalibrationMethod = "temperature"  # map applied to the ensemble mean
    input_stage: int = 0  # stage whose tokenised prompt the input-only head reads

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | Any) -> TrainConfig:
        """The config named by ``predictor_*`` parameter keys (missing keys keep defaults).

        ``params`` is a :class:`asd_core.ground.config.Params` or a dict of notebook parameters.
        """
        values = params.model_dump() if hasattr(params, "model_dump") else dict(params)
        kwargs = {field: values[key] for key, field in PARAM_KEYS.items() if key in values}
        if "hidden_sizes" in kwargs:
            kwargs["hidden_sizes"] = tuple(kwargs["hidden_sizes"])
        return cls(**kwargs)

    def __post_init__(self) -> None:
        checks = {
            "hidden_sizes": bool(self.hidden_sizes) and all(h > 0 for h in self.hidden_sizes),
            "dropout": 0.0 <= self.dropout < 1.0,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": self.batch_size > 0,
            "max_epochs": self.max_epochs > 0,
            "patience": self.patience > 0,
            "n_members": self.n_members > 0,
            "calibration": self.calibration in ("temperature", "isotonic", "none"),
            "input_stage": self.input_stage >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise AsdError(
                    f"predictor config: key '{key}': invalid value {getattr(self, key)!r}"
                )


# parameter key (params/*.yaml) → TrainConfig field
PARAM_KEYS = {
    "predictor_hidden_sizes": "hidden_sizes",
    "predictor_dropout": "dropout",
    "predictor_lr": "lr",
    "predictor_weight_decay": "weight_decay",
    "predictor_batch_size": "batch_size",
    "predictor_max_epochs": "max_epochs",
    "predictor_patience": "patience",
    "predictor_members": "n_members",
    "predictor_calibration": "calibration",
    "predictor_input_stage": "input_stage",
}


# -- one member ---------------------------------------------------------------------------------
class StageMLP(nn.Module):
    """Standardise → trunk (Linear, ReLU, Dropout)* → one logit per stage."""

    shift: torch.Tensor  # (F,) buffer: training mean per feature
    scale: torch.Tensor  # (F,) buffer: training std per feature

    def __init__(self, n_features: int, n_stages: int, hidden_sizes: Sequence[int], dropout: float):
        super().__init__()
        self.register_buffer("shift", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.Linear(width, n_stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) features → (N, K) logits, one per stage head."""
        return self.heads(self.trunk((x - self.shift) / self.scale))


def standardisation(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F,) mean and (F,) std of training features; constant columns get std 1."""
    shift = X.mean(axis=0, dtype=np.float64)
    scale = X.std(axis=0, dtype=np.float64)
    scale[scale < 1e-6] = 1.0
    return shift.astype(np.float32), scale.astype(np.float32)


def member_seeds(run_seed: int, n_members: int, stream: int = 0) -> list[int]:
    """Independent 32-bit seeds for the members of one of run ``run_seed``'s ensembles.

    ``stream`` tells the run's ensembles apart (0: output predictor, 1: input-only head).
    """
    seq = np.random.SeedSequence(run_seed, spawn_key=(stream,))
    return [int(s) for s in seq.generate_state(n_members)]


@contextlib.contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """One CPU thread and a seeded global RNG, both restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Split:
    """Rows for one ensemble: features, the head each row is read on, and its 0/1 label."""

    X: np.ndarray  # (N, F) float32 features
    stages: np.ndarray  # (N,) int64 stage index (head)
    y: np.ndarray  # (N,) float32 labels in {0, 1}

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, columns: Sequence[int]) -> Split:
        """The same rows with only feature ``columns`` (for the feature ablation)."""
        return Split(self.X[:, list(columns)], self.stages, self.y)


@dataclass(frozen=True)
class MemberLog:
    """How one member's training ended."""

    seed: int  # the member's torch seed
    best_epoch: int  # 1-based epoch whose weights were kept
    calib_bce: float  # calibration-split BCE at that epoch, nats


def _head_logits(model: StageMLP, X: torch.Tensor, stages: torch.Tensor) -> torch.Tensor:
    """(N,) logit of each row on its own stage's head."""
    return model(X).gather(1, stages[:, None]).squeeze(1)


def fit_member(
    train: Split, calib: Split, n_stages: int, config: TrainConfig, seed: int
) -> tuple[StageMLP, MemberLog]:
    """Train one MLP with BCE + AdamW; keep the weights of the best calibration-split epoch."""
    with _deterministic_torch(seed):
        model = StageMLP(train.X.shape[1], n_stages, config.hidden_sizes, config.dropout)
        shift, scale = standardisation(train.X)
        model.shift.copy_(torch.from_numpy(shift))
        model.scale.copy_(torch.from_numpy(scale))
        X, s, y = (torch.tensor(a) for a in (train.X, train.stages, train.y))
        Xc, sc, yc = (torch.tensor(a) for a in (calib.X, calib.stages, calib.y))
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        order = torch.Generator().manual_seed(seed)
        best_loss, best_epoch, best_state, stale = math.inf, 0, copy.deepcopy(model.state_dict()), 0
        for epoch in range(1, config.max_epochs + 1):
            model.train()
            for idx in torch.randperm(len(y), generator=order).split(config.batch_size):
                loss = F.binary_cross_entropy_with_logits(
                    _head_logits(model, X[idx], s[idx]), y[idx]
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                calib_loss = float(
                    F.binary_cross_entropy_with_logits(_head_logits(model, Xc, sc), yc)
                )
            if calib_loss < best_loss - 1e-6:
                best_loss, best_epoch, stale = calib_loss, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= config.patience:
                    break
        model.load_state_dict(best_state)
        model.eval()
    return model, MemberLog(seed=seed, best_epoch=best_epoch, calib_bce=best_loss)


# -- calibration of the ensemble mean -----------------------------------------------------------
@dataclass(frozen=True)
class StageCalibration:
    """A monotone map from raw ensemble mean to calibrated probability, for one stage."""

    method: Literal["temperature", "isotonic", "identity"]  # identity: too few labels to fit
    temperature: float = 1.0  # p ↦ σ(logit(p) / T); T > 1 softens over-confident predictions
    knots_x: tuple[float, ...] = ()  # isotonic: raw-probability knots, increasing
    knots_y: tuple[float, ...] = ()  # isotonic: calibrated probability at each knot

    def apply(self, p: np.ndarray) -> np.ndarray:
        """(N,) raw probabilities → (N,) calibrated probabilities."""
        if self.method == "temperature":
            q = np.clip(p, _P_CLIP, 1 - _P_CLIP)
            return np.asarray(expit(logit(q) / self.temperature), dtype=p.dtype)
        if self.method == "isotonic":
            return np.interp(p, self.knots_x, self.knots_y).astype(p.dtype)
        return p


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The T in [e^-3, e^3] minimising the BCE of σ(logit(p) / T) against ``y`` (N,)."""
    z = logit(np.clip(p.astype(np.float64), _P_CLIP, 1 - _P_CLIP))
    y = y.astype(np.float64)

    def nll(log_t: float) -> float:
        zt = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, zt) - y * zt))

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(math.exp(res.x))


def fit_stage_calibration(
    p: np.ndarray, y: np.ndarray, method: CalibrationMethod
) -> StageCalibration:
    """Fit ``method`` on raw probabilities ``p`` (N,) and labels ``y`` (N,), if it helps.

    Identity when ``method`` is "none", when the labels hold one class only (nothing to learn;
    the final stage is always accepted in its own right), or when the map does not lower the
    expected calibration error on held-out rows (:func:`calibration_helps`).
    """
    if method == "none" or len(np.unique(y)) < 2:
        return StageCalibration("identity")
    if not calibration_helps(p, y, method):
        return StageCalibration("identity")
    return _fit_map(p, y, method)


def calibration_helps(p: np.ndarray, y: np.ndarray, method: CalibrationMethod) -> bool:
    """Whether ``method`` lowers ECE on rows it was not fitted on: two-fold cross-fitting over
    the calibration rows (a fixed alternate split of the rows sorted by p), mean ECE of the
    fitted maps vs of the raw probabilities on the same held-out halves."""
    from asd_core.learning.assessment import ece  # a lazy import: calibration reads predictors

    order = np.argsort(p, kind="stable")
    halves = (order[0::2], order[1::2])
    if min(len(h) for h in halves) < 2:
        return False
    fitted, raw = [], []
    for fit_on, test_on in (halves, halves[::-1]):
        if len(np.unique(y[fit_on])) < 2:
            return False
        mapped = _fit_map(p[fit_on], y[fit_on], method).apply(p[test_on])
        fitted.append(ece(y[test_on], mapped))
        raw.append(ece(y[test_on], p[test_on]))
    return float(np.mean(fitted)) < float(np.mean(raw))


def _fit_map(p: np.ndarray, y: np.ndarray, method: CalibrationMethod) -> StageCalibration:
    if method == "temperature":
        return StageCalibration("temperature", temperature=fit_temperature(p, y))
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return StageCalibration(
        "isotonic",
        knots_x=tuple(float(v) for v in iso.X_thresholds_),
        knots_y=tuple(float(v) for v in iso.y_thresholds_),
    )


@dataclass(frozen=True)
class Calibration:
    """One :class:`StageCalibration` per stage head."""

    stages: tuple[StageCalibration, ...]

    def apply(self, p: np.ndarray, stages: np.ndarray) -> np.ndarray:
        """(N,) raw probabilities of rows on heads ``stages`` (N,) → calibrated (N,)."""
        if len(p) == 1:  # the online case: skip the grouping
            return self.stages[int(stages[0])].apply(p)
        out = p.copy()
        for k in np.unique(stages):
            rows = stages == k
            out[rows] = self.stages[int(k)].apply(p[rows])
        return out

    @classmethod
    def fit(
        cls,
        p: np.ndarray,
        y: np.ndarray,
        stages: np.ndarray,
        n_heads: int,
        method: CalibrationMethod,
    ) -> Calibration:
        """Fit each head's map on its own calibration rows."""
        return cls(
            tuple(
                fit_stage_calibration(p[stages == k], y[stages == k], method)
                for k in range(n_heads)
            )
        )

    @classmethod
    def identity(cls, n_heads: int) -> Calibration:
        return cls(tuple(StageCalibration("identity") for _ in range(n_heads)))


# -- the ensemble -------------------------------------------------------------------------------
class Ensemble:
    """Members that share features, architecture and standardisation, plus per-head calibration.

    Prediction runs the members' weights stacked in numpy: (M, N) logits in a few matmuls.
    """

    def __init__(
        self, members: Sequence[StageMLP], calibration: Calibration, logs: Sequence[MemberLog] = ()
    ):
        if not members:
            raise AsdError("an ensemble needs at least one member")
        self.members = list(members)  # torch modules, eval mode (kept for saving)
        self.calibration = calibration  # per-head map of the ensemble mean
        self.logs = list(logs)  # how each member's training ended
        first = self.members[0]
        self.shift = first.shift.numpy().copy()  # (F,) standardisation, shared by all members
        self.scale = first.scale.numpy().copy()  # (F,)
        linears = [
            [m for m in member.modules() if isinstance(m, nn.Linear)] for member in self.members
        ]
        # per layer: (M, in, out) weights and (M, 1, out) biases
        self.weights = [
            np.stack([layers[i].weight.detach().numpy().T for layers in linears])
            for i in range(len(linears[0]))
        ]
        self.biases = [
            np.stack([layers[i].bias.detach().numpy()[None, :] for layers in linears])
            for i in range(len(linears[0]))
        ]

    @property
    def n_features(self) -> int:
        return int(self.shift.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.biases[-1].shape[-1])

    def logits(self, X: np.ndarray) -> np.ndarray:
        """(N, F) features → (M, N, K) logits of every member and head."""
        h = ((np.asarray(X, dtype=np.float32) - self.shift) / self.scale)[None]
        for W, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = np.maximum(h @ W + b, 0.0)
        return h @ self.weights[-1] + self.biases[-1]

    def member_probs(self, X: np.ndarray, stages: np.ndarray) -> np.ndarray:
        """(M, N) uncalibrated probability of each member for each row on its own head."""
        X = np.asarray(X, dtype=np.float32)
        stages = np.asarray(stages, dtype=np.int64)
        if X.ndim != 2 or X.shape[1] != self.n_features or stages.shape != (X.shape[0],):
            raise ValueError(
                f"expected X (N, {self.n_features}) and stages (N,), got {X.shape} and {stages.shape}"
            )
        if len(stages) and (stages.min() < 0 or stages.max() >= self.n_heads):
            raise AsdError(f"stage outside 0..{self.n_heads - 1} passed to the predictor")
        z = self.logits(X)[:, np.arange(len(stages)), stages]
        return expit(z)

    def predict(
        self, X: np.ndarray, stages: np.ndarray, calibrated: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N,) mean probability (calibrated unless told otherwise) and (N,) variance across members.

        The variance is the members' disagreement on the raw scale; the risk adjustment turns
        it into an effective sample size and clips that, so it needs no recalibration.
        """
        probs = self.member_probs(X, stages)
        mean = probs.mean(axis=0)
        if calibrated:
            mean = self.calibration.apply(mean, np.asarray(stages, dtype=np.int64))
        return mean, probs.var(axis=0)

    def predict_all_heads(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, K) calibrated mean and (N, K) variance of every row on every head."""
        n = len(X)
        stages = np.repeat(np.arange(self.n_heads), n)
        mean, var = self.predict(
            np.tile(np.asarray(X, dtype=np.float32), (self.n_heads, 1)), stages
        )
        return mean.reshape(self.n_heads, n).T, var.reshape(self.n_heads, n).T


def fit_ensemble(
    train: Split, calib: Split, n_heads: int, config: TrainConfig, seed: int, stream: int = 0
) -> Ensemble:
    """Train ``config.n_members`` members on seeds derived from (``seed``, ``stream``), then calibrate."""
    for name, split in (("training", train), ("calibration", calib)):
        if len(split) == 0:
            raise AsdError(f"the {name} split has no labelled rows to train the predictor on")
    fitted = [
        fit_member(train, calib, n_heads, config, s)
        for s in member_seeds(seed, config.n_members, stream)
    ]
    ensemble = Ensemble(
        [m for m, _ in fitted], Calibration.identity(n_heads), [log for _, log in fitted]
    )
    raw, _ = ensemble.predict(calib.X, calib.stages, calibrated=False)
    ensemble.calibration = Calibration.fit(raw, calib.y, calib.stages, n_heads, config.calibration)
    return ensemble


# -- rows of a generations frame ----------------------------------------------------------------
REQUIRED_COLUMNS = (
    "item_id", "task", "stage", "prompt_ids", "token_ids", "logprobs", "entropy",
    "top1_logprob", "top2_logprob", "stop_reason", "accepted_frac_prev",
)  # fmt: skip


def _check_frame(df: pd.DataFrame, what: str, label_column: str) -> None:
    if len(df) == 0:
        raise AsdError(
            f"the {what} frame is empty: no (input, stage) rows to train the predictor on"
        )
    missing = [c for c in (*REQUIRED_COLUMNS, label_column) if c not in df.columns]
    if missing:
        raise AsdError(f"the {what} frame lacks column(s) {missing}")


def _labels(df: pd.DataFrame, label_column: str) -> np.ndarray:
    """(N,) float32 labels; rows without a label (NaN) are dropped by the callers."""
    return pd.to_numeric(df[label_column], errors="coerce").to_numpy(
        dtype=np.float32, na_value=np.nan
    )


def output_split(df: pd.DataFrame, features: FeatureSet, label_column: str) -> Split:
    """Features, stage and label of every labelled row."""
    y = _labels(df, label_column)
    keep = ~np.isnan(y)
    rows = df[keep]
    X = features.extract_frame(rows)
    bad = np.argwhere(~np.isfinite(X))
    if len(bad):  # e.g. a NaN entropy written by a broken runtime: name it, do not train on it
        r, c = bad[0]
        raise AsdError(
            f"non-finite feature {features.names[c]!r} for item {rows['item_id'].iloc[r]!r} "
            f"stage {rows['stage'].iloc[r]}: check the generations dataset"
        )
    return Split(X, rows["stage"].to_numpy(dtype=np.int64), y[keep])


def entry_features(
    df: pd.DataFrame, features: FeatureSet, input_stage: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's input-only features, read from its input's stage-``input_stage`` row.

    Returns (N, len(input_names)) float32 features (NaN where missing) and (N,) bool found:
    the prompt as that stage tokenises it; inputs without such a row are not found.
    """
    ref = df[df["stage"] == input_stage].drop_duplicates("item_id")
    X_items = features.input_frame(ref)
    pos = pd.Index(ref["item_id"]).get_indexer(df["item_id"])
    found = pos >= 0
    X = np.full((len(df), X_items.shape[1]), np.nan, dtype=np.float32)
    X[found] = X_items[pos[found]]
    return X, found


def input_split(
    df: pd.DataFrame, features: FeatureSet, label_column: str, input_stage: int
) -> Split:
    """Rows for the input-only head: each labelled (input, stage k) row → its prompt features."""
    X, found = entry_features(df, features, input_stage)
    y = _labels(df, label_column)
    keep = found & ~np.isnan(y)
    return Split(X[keep], df["stage"].to_numpy(dtype=np.int64)[keep], y[keep])


# -- the predictor ------------------------------------------------------------------------------
@dataclass
class QualityPredictor:
    """Output ensemble + input-only ensemble, with the features they were trained on."""

    features: FeatureSet  # extraction, PCA included when use_hidden
    label_mode: LabelMode  # which acceptance label was learned ("answer" or "token")
    config: TrainConfig  # how it was trained
    seed: int  # the run seed members were derived from
    output_model: Ensemble  # P(accept_k | stage-k features)
    input_model: Ensemble  # P(accept_k | prompt features), one head per k
    info: dict[str, Any] = field(default_factory=dict)  # training sizes, for reports

    def predict(self, X: np.ndarray, stages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, F) features of rows of stages (N,) → (N,) calibrated mean, (N,) member variance."""
        return self.output_model.predict(X, stages)

    def predict_view(self, view: StageView) -> tuple[float, float]:
        """Calibrated P(accept_k) and its ensemble variance for one live stage output."""
        mean, var = self.output_model.predict(
            self.features.extract(view)[None], np.array([view.stage])
        )
        return float(mean[0]), float(var[0])

    def predict_entry(
        self, prompt_ids: Sequence[int] | np.ndarray, task: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(K,) calibrated P(accept_k) for every stage k and (K,) variance, before any model runs.

        ``prompt_ids`` is the prompt as stage ``config.input_stage`` tokenises it.
        """
        mean, var = self.input_model.predict_all_heads(
            self.features.input_features(prompt_ids, task)[None]
        )
        return mean[0], var[0]

    def predict_inputs(self, X_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, len(input_names)) input features → (N, K) calibrated mean and (N, K) variance."""
        return self.input_model.predict_all_heads(X_in)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (weights) and ``path.with_suffix('.json')`` atomically; return ``path``."""
        path = Path(path)
        hidden = self.features.hidden
        blob: dict[str, Any] = {
            "output": [m.state_dict() for m in self.output_model.members],
            "input": [m.state_dict() for m in self.input_model.members],
            "hidden_means": [torch.from_numpy(a) for a in hidden.means] if hidden else [],
            "hidden_components": [torch.from_numpy(a) for a in hidden.components] if hidden else [],
        }
        buf = io.BytesIO()
        torch.save(blob, buf)
        data = buf.getvalue()
        meta = {
            "format": FILE_FORMAT,
            "feature_version": self.features.version,
            "feature_names": list(self.features.names),
            "input_feature_names": list(self.features.input_names),
            "n_stages": self.features.n_stages,
            "use_hidden": self.features.use_hidden,
            "label_mode": self.label_mode,
            "seed": self.seed,
            "config": asdict(self.config),
            "calibration": {
                "output": [asdict(c) for c in self.output_model.calibration.stages],
                "input": [asdict(c) for c in self.input_model.calibration.stages],
            },
            "members": {
                "output": [asdict(log) for log in self.output_model.logs],
                "input": [asdict(log) for log in self.input_model.logs],
            },
            "info": self.info,
            "weights_file": path.name,
            "weights_sha256": hashlib.sha256(data).hexdigest(),
        }
        # weights first: a save killed in between leaves a sha256 mismatch that load reports
        atomic_write_bytes(path, data)
        atomic_write_text(meta_path(path), json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def load(
        cls, path: str | Path, features: FeatureSet | None = None, label_mode: str | None = None
    ) -> QualityPredictor:
        """Read a saved predictor; refuse one trained on other features (or another label mode)."""
        path = Path(path)
        meta_file = meta_path(path)
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            expected_keys = {
                "feature_names",
                "feature_version",
                "config",
                "calibration",
                "weights_sha256",
            }
            if not isinstance(meta, dict) or not expected_keys <= meta.keys():
                raise ValueError("missing keys")
        except FileNotFoundError:
            raise AsdError(f"{meta_file}: predictor file not found") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise AsdError(f"{meta_file}: not a predictor file ({exc})") from None
        if meta.get("format") != FILE_FORMAT:
            raise AsdError(
                f"{meta_file}: predictor file format {meta.get('format')}, this code reads {FILE_FORMAT}"
            )
        if features is not None:
            _check_features(meta_file, meta, features)
        if label_mode is not None and meta["label_mode"] != label_mode:
            raise AsdError(
                f"{meta_file}: predictor learned label mode {meta['label_mode']!r}, expected {label_mode!r}"
            )
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise AsdError(
                f"{path}: predictor weights not found (next to {meta_file.name})"
            ) from None
        if hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
            raise AsdError(
                f"{path}: weights do not match {meta_file.name} (interrupted save?); retrain"
            )
        blob = torch.load(io.BytesIO(data), weights_only=True)
        cfg = meta["config"]
        config = TrainConfig(**{**cfg, "hidden_sizes": tuple(cfg["hidden_sizes"])})
        hidden = None
        if meta["use_hidden"]:
            hidden = HiddenPCA(
                means=tuple(t.numpy() for t in blob["hidden_means"]),
                components=tuple(t.numpy() for t in blob["hidden_components"]),
            )
        feats = FeatureSet(
            n_stages=int(meta["n_stages"]), use_hidden=bool(meta["use_hidden"]), hidden=hidden
        )
        _check_features(meta_file, meta, feats)  # this code's names for the saved layout
        n_stages = feats.n_stages

        def rebuild(key: str, n_features: int) -> Ensemble:
            members = []
            for state in blob[key]:
                member = StageMLP(n_features, n_stages, config.hidden_sizes, config.dropout)
                member.load_state_dict(state)
                members.append(member.eval())
            calib = Calibration(
                tuple(
                    StageCalibration(
                        c["method"],
                        float(c["temperature"]),
                        tuple(c["knots_x"]),
                        tuple(c["knots_y"]),
                    )
                    for c in meta["calibration"][key]
                )
            )
            logs = [MemberLog(**log) for log in meta.get("members", {}).get(key, [])]
            return Ensemble(members, calib, logs)

        return cls(
            features=feats,
            label_mode=meta["label_mode"],
            config=config,
            seed=int(meta["seed"]),
            output_model=rebuild("output", feats.n_features),
            input_model=rebuild("input", len(feats.input_names)),
            info=dict(meta.get("info", {})),
        )


def meta_path(path: str | Path) -> Path:
    """The JSON that describes the weights file ``path``."""
    return Path(path).with_suffix(".json")


def _check_features(meta_file: Path, meta: dict[str, Any], features: FeatureSet) -> None:
    """One-line refusal naming the first feature where the file and ``features`` differ."""
    saved = list(meta["feature_names"])
    wanted = list(features.names)
    for i in range(max(len(saved), len(wanted))):
        a = saved[i] if i < len(saved) else "(none)"
        b = wanted[i] if i < len(wanted) else "(none)"
        if a != b:
            raise AsdError(
                f"{meta_file}: predictor was trained on other features: feature #{i} is {a!r} in "
                f"the file but {b!r} here; retrain the predictor"
            )
    if meta["feature_version"] != features.version:
        raise AsdError(
            f"{meta_file}: predictor was trained on feature version {meta['feature_version']!r}, "
            f"this code computes version {features.version!r} (first feature {saved[0]!r}); retrain"
        )


def train_predictor(
    train_df: pd.DataFrame,
    calib_df: pd.DataFrame,
    features: FeatureSet,
    label_mode: LabelMode = "answer",
    config: TrainConfig | None = None,
    seed: int = 0,
) -> QualityPredictor:
    """Train the output ensemble and the input-only head on generations-frame rows.

    ``train_df`` and ``calib_df`` hold one row per (input, stage) (columns of the generations
    dataset); early stopping and calibration use ``calib_df``. With ``features.use_hidden`` the
    hidden-state PCA is fitted on ``train_df``. Rows with a missing label are left out.
    """
    config = config or TrainConfig()
    if label_mode not in LABEL_COLUMNS:
        raise AsdError(f"unknown label mode {label_mode!r}; expected one of {list(LABEL_COLUMNS)}")
    label_column = LABEL_COLUMNS[label_mode]
    _check_frame(train_df, "training", label_column)
    _check_frame(calib_df, "calibration", label_column)
    if config.input_stage >= features.n_stages:
        raise AsdError(
            f"predictor config: key 'input_stage': {config.input_stage} ≥ n_stages {features.n_stages}"
        )
    if features.use_hidden and features.hidden is None:
        features = features.fit_hidden(train_df)
    K = features.n_stages
    out_train, out_calib = (output_split(df, features, label_column) for df in (train_df, calib_df))
    in_train, in_calib = (
        input_split(df, features, label_column, config.input_stage) for df in (train_df, calib_df)
    )
    return QualityPredictor(
        features=features,
        label_mode=label_mode,
        config=config,
        seed=seed,
        output_model=fit_ensemble(out_train, out_calib, K, config, seed, stream=0),
        input_model=fit_ensemble(in_train, in_calib, K, config, seed, stream=1),
        info={
            "n_train_rows": len(out_train),
            "n_calib_rows": len(out_calib),
            "n_train_inputs_entry": len(in_train),
        },
    )
