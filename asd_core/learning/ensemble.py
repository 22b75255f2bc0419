"""A deep ensemble of small MLPs: each member maps standardised features through a shared trunk to one logit per stage.

A row of stage k is trained and read on head k only. Members are trained with BCE + AdamW and
stopped early on the calibration split, with seeds derived from one run seed; the ensemble gives
the mean p̂ and the variance across members. Training runs in torch on one CPU thread
(deterministic for a seed); prediction runs the same weights in numpy, which for one input is
an order of magnitude faster than torch's dispatch.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from torch import nn
from torch.nn import functional as F

from asd_core.ground.config import Params, default
from asd_core.ground.errors import AsdError
from asd_core.learning.calibration import Calibration, CalibrationMethod


@dataclass(frozen=True)
class TrainConfig:
    """How to train both ensembles (the output predictor and the input-only head)."""

    # defaults are the parameters' (config.Params is the one source of defaults)
    hidden_sizes: tuple[int, ...] = tuple(default("predictor_hidden_sizes"))  # trunk widths
    dropout: float = default("predictor_dropout")  # dropout after each trunk layer, training only
    lr: float = default("predictor_lr")  # AdamW learning rate
    weight_decay: float = default("predictor_weight_decay")  # AdamW decoupled weight decay
    batch_size: int = default("predictor_batch_size")  # rows per optimiser step
    max_epochs: int = default(
        "predictor_max_epochs"
    )  # upper bound on passes over the training split
    patience: int = default(
        "predictor_patience"
    )  # epochs without a lower calibration BCE, then stop
    n_members: int = default("predictor_members")  # deep-ensemble size
    calibration: CalibrationMethod = default("predictor_calibration")  # map of the ensemble mean
    input_stage: int = default("predictor_input_stage")  # stage whose prompt the input head reads

    @classmethod
    def from_params(cls, params: Params | Mapping[str, Any]) -> TrainConfig:
        """The config named by ``predictor_*`` parameter keys (missing keys keep defaults)."""
        values = params.present() if isinstance(params, Params) else dict(params)
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
