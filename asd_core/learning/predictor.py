"""The quality predictor: P(accept_k | what stage k produced), with uncertainty (docs/design.md).

A :class:`QualityPredictor` holds two deep ensembles (:mod:`asd_core.learning.ensemble`) and
their per-stage calibration (:mod:`asd_core.learning.calibration`). The output ensemble reads
the features of a stage's output and gives the mean p̂ and the variance across members (the
uncertainty the risk adjustment shrinks). The input-only head reads prompt features alone
(prompt length, tail entropy, task; the prompt as stage ``input_stage`` tokenises it) and
predicts P(accept_k) for every k before any model runs: the entry decision uses it.

A saved predictor is two files written atomically: ``<name>.pt`` (state dicts, hidden PCA)
and ``<name>.json`` (feature names and version, label mode, config, calibration, the sha256
of the ``.pt``); loading against a different feature list is refused with one line.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from asd_core.ground.errors import AsdError
from asd_core.ground.files import atomic_write_bytes, atomic_write_text
from asd_core.learning.calibration import Calibration, StageCalibration
from asd_core.learning.ensemble import (
    Ensemble,
    MemberLog,
    Split,
    StageMLP,
    TrainConfig,
    fit_ensemble,
)
from asd_core.learning.features import FeatureSet, HiddenPCA, StageView

LabelMode = Literal["answer", "token"]
LABEL_COLUMNS: dict[str, str] = {"answer": "label_answer", "token": "label_token"}
FILE_FORMAT = 1  # bump when the saved layout changes


# -- one member ---------------------------------------------------------------------------------


# -- calibration of the ensemble mean -----------------------------------------------------------


# -- the ensemble -------------------------------------------------------------------------------


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
    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(description, tensors): the JSON-able description and the weights, for any file."""
        hidden = self.features.hidden
        tensors: dict[str, Any] = {
            "output": [m.state_dict() for m in self.output_model.members],
            "input": [m.state_dict() for m in self.input_model.members],
            "hidden_means": [torch.from_numpy(a) for a in hidden.means] if hidden else [],
            "hidden_components": [torch.from_numpy(a) for a in hidden.components] if hidden else [],
        }
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
        }
        return meta, tensors

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (weights) and ``path.with_suffix('.json')`` atomically; return ``path``."""
        path = Path(path)
        meta, tensors = self.state()
        buf = io.BytesIO()
        torch.save(tensors, buf)
        data = buf.getvalue()
        meta |= {"weights_file": path.name, "weights_sha256": hashlib.sha256(data).hexdigest()}
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
            if not isinstance(meta, dict) or "weights_sha256" not in meta:
                raise ValueError("missing keys")
        except FileNotFoundError:
            raise AsdError(f"{meta_file}: predictor file not found") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise AsdError(f"{meta_file}: not a predictor file ({exc})") from None
        check_description(meta_file, meta, features, label_mode)
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
        return cls.from_state(meta_file, meta, torch.load(io.BytesIO(data), weights_only=True))

    @classmethod
    def from_state(
        cls, where: str | Path, meta: dict[str, Any], tensors: dict[str, Any]
    ) -> QualityPredictor:
        """The predictor :meth:`state` described (``where`` names the file in errors)."""
        cfg = meta["config"]
        config = TrainConfig(**{**cfg, "hidden_sizes": tuple(cfg["hidden_sizes"])})
        hidden = None
        if meta["use_hidden"]:
            hidden = HiddenPCA(
                means=tuple(t.numpy() for t in tensors["hidden_means"]),
                components=tuple(t.numpy() for t in tensors["hidden_components"]),
            )
        feats = FeatureSet(
            n_stages=int(meta["n_stages"]), use_hidden=bool(meta["use_hidden"]), hidden=hidden
        )
        _check_features(Path(where), meta, feats)  # this code's names for the saved layout

        def rebuild(key: str, n_features: int) -> Ensemble:
            members = []
            for state in tensors[key]:
                member = StageMLP(n_features, feats.n_stages, config.hidden_sizes, config.dropout)
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


def check_description(
    where: str | Path,
    meta: dict[str, Any],
    features: FeatureSet | None = None,
    label_mode: str | None = None,
) -> None:
    """One-line refusal of a predictor description of another format, features or label."""
    where = Path(where)
    expected_keys = {"feature_names", "feature_version", "config", "calibration", "label_mode"}
    if not expected_keys <= meta.keys():
        missing = sorted(expected_keys - meta.keys())[0]
        raise AsdError(f"{where}: not a predictor description (no field '{missing}')")
    if meta.get("format") != FILE_FORMAT:
        raise AsdError(
            f"{where}: predictor file format {meta.get('format')}, this code reads {FILE_FORMAT}"
        )
    if features is not None:
        _check_features(where, meta, features)
    if label_mode is not None and meta["label_mode"] != label_mode:
        raise AsdError(
            f"{where}: predictor learned label mode {meta['label_mode']!r}, expected {label_mode!r}"
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
