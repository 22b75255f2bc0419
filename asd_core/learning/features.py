"""Features of one stage's output for the quality predictor (docs/design.md §4).

Every feature is a small pure function of what stage k produced for one input; a
:class:`FeatureSet` lays them out in a fixed, named order, grouped as

- ``input``: prompt length, entropy of the last 32 prompt tokens, task one-hot;
- ``output``: output/prompt length ratio, mean and min token log-prob, mean predictive entropy,
  mean top-1/top-2 probability margin, fraction of tokens whose top-1 probability is below 0.5,
  stop-reason one-hot;
- ``stage``: one-hot of k;
- ``verification``: the accepted fraction when M_k verified y_{k-1}, and whether there was one;
- ``hidden`` (optional, off by default): the mean-pooled final hidden state projected to 32
  dimensions by a per-stage PCA fitted on the training split.

A :class:`StageView` holds the arrays the features read and is built the same way from a
generations-dataset row (:meth:`StageView.from_row`) or a live backend ``Generation``
(:meth:`StageView.from_generation`), so offline training and online decisions see identical
vectors. Extraction is plain numpy on short arrays (tens of microseconds per input).

The predictor file records :attr:`FeatureSet.version` and :attr:`FeatureSet.names` and refuses
to run against a different list: bump :data:`FEATURE_VERSION` whenever a definition changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from asd_core.ground.errors import AsdError

if TYPE_CHECKING:  # features sit below models/ (docs/design.md §14): a Generation is only read
    from asd_core.models.base import Generation

FEATURE_VERSION = "1"  # bump when any feature's definition changes
TASKS = ("mmlu", "humaneval", "asdiv", "truthfulqa", "gsm8k")  # task one-hot order
STOP_REASONS = ("eos", "stop", "length")  # stop-reason one-hot order
PROMPT_TAIL = 32  # prompt tokens whose id distribution gives the tail entropy
HIDDEN_DIMS = 32  # PCA dimensions of the optional hidden-state group
LOGPROB_FLOOR = -30.0  # nats; a -inf log-prob (an impossible token) counts as this
UNCERTAIN_TOP1 = math.log(0.5)  # a token is "uncertain" when log p(top-1) is below this


# -- the stage output, as features see it -------------------------------------------------------
@dataclass(frozen=True)
class StageView:
    """What stage k produced for one input; ``n`` is the number of generated tokens."""

    prompt_ids: np.ndarray  # (n_in,) int64, the stage's tokenised prompt
    n_out: int  # generated tokens (EOS included when written)
    logprobs: np.ndarray  # (n,) float32, log p(chosen token), nats
    entropy: np.ndarray  # (n,) float32, entropy of each next-token distribution, nats
    top1_logprob: np.ndarray  # (n,) float32, largest log-prob at each step, nats
    top2_logprob: np.ndarray  # (n,) float32, second largest (-inf when not reported), nats
    stop_reason: str  # "eos", "stop" or "length"
    stage: int  # k, 0 = cheapest
    task: str  # one of TASKS
    accepted_frac_prev: float  # fraction of y_{k-1} accepted by M_k; NaN for k = 0
    hidden_mean: np.ndarray | None = None  # (d_model,) float32 mean-pooled final hidden state

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StageView:
        """View of one generations-dataset row (a dict, or a pandas row / namedtuple ``_asdict``)."""
        hidden = row.get("hidden_mean")
        if hidden is not None and np.ndim(hidden) == 0:  # a null read back as NaN
            hidden = None
        prev = row.get("accepted_frac_prev")
        if prev is not None and pd.isna(prev):
            prev = None
        return cls(
            prompt_ids=np.asarray(row["prompt_ids"], dtype=np.int64),
            n_out=len(row["token_ids"]),
            logprobs=np.asarray(row["logprobs"], dtype=np.float32),
            entropy=np.asarray(row["entropy"], dtype=np.float32),
            top1_logprob=np.asarray(row["top1_logprob"], dtype=np.float32),
            top2_logprob=np.asarray(row["top2_logprob"], dtype=np.float32),
            stop_reason=str(row["stop_reason"]),
            stage=int(row["stage"]),
            task=str(row["task"]),
            accepted_frac_prev=math.nan if prev is None else float(prev),
            hidden_mean=None if hidden is None else np.asarray(hidden, dtype=np.float32),
        )

    @classmethod
    def from_generation(
        cls, gen: Generation, stage: int, task: str, accepted_frac_prev: float = math.nan
    ) -> StageView:
        """View of a live backend output of stage ``stage`` (``accepted_frac_prev`` NaN at k = 0)."""
        n = len(gen.token_ids)
        top = np.asarray(gen.top_logprobs, dtype=np.float32)
        if top.ndim != 2:  # a flat top-1 column, or nothing reported
            top = top.reshape(n, -1) if top.size else np.empty((n, 0), dtype=np.float32)
        missing = np.full(n, -np.inf, dtype=np.float32)
        return cls(
            prompt_ids=np.asarray(gen.prompt_ids, dtype=np.int64),
            n_out=n,
            logprobs=np.asarray(gen.logprobs, dtype=np.float32),
            entropy=np.asarray(gen.entropy, dtype=np.float32),
            top1_logprob=top[:, 0] if top.shape[1] >= 1 else missing,
            top2_logprob=top[:, 1] if top.shape[1] >= 2 else missing,
            stop_reason=str(gen.stop_reason),
            stage=int(stage),
            task=str(task),
            accepted_frac_prev=float(accepted_frac_prev),
            hidden_mean=None
            if gen.hidden_mean is None
            else np.asarray(gen.hidden_mean, dtype=np.float32),
        )


# -- input features -----------------------------------------------------------------------------
def prompt_length(prompt_ids: np.ndarray) -> float:
    """n_in: prompt length in tokens."""
    return float(len(prompt_ids))


def prompt_tail_entropy(prompt_ids: np.ndarray, window: int = PROMPT_TAIL) -> float:
    """Entropy (nats) of the empirical distribution of token ids among the last ``window`` tokens.

    0 for an empty prompt or one repeated token; log(window) when all ids differ.
    """
    tail = np.asarray(prompt_ids)[-window:]
    if len(tail) == 0:
        return 0.0
    _, counts = np.unique(tail, return_counts=True)
    p = counts / len(tail)
    return float(-(p * np.log(p)).sum())


def one_hot(value: str, choices: Sequence[str], what: str) -> np.ndarray:
    """(len(choices),) float32 indicator of ``value``; an unknown value is a user error."""
    if value not in choices:
        raise AsdError(f"unknown {what} {value!r}; expected one of {list(choices)}")
    out = np.zeros(len(choices), dtype=np.float32)
    out[choices.index(value)] = 1.0
    return out


def task_one_hot(task: str) -> np.ndarray:
    """(len(TASKS),) indicator of the task."""
    return one_hot(task, TASKS, "task")


# -- output features (all finite for an empty output: it reads as "no uncertain token") ---------
def length_ratio(n_out: int, n_in: int) -> float:
    """|y_k| / n_in, output tokens per prompt token (n_in floored at 1)."""
    return n_out / max(n_in, 1)


def mean_logprob(logprobs: np.ndarray) -> float:
    """Mean log p of the chosen tokens, nats (0 for an empty output)."""
    if len(logprobs) == 0:
        return 0.0
    return float(np.maximum(logprobs, LOGPROB_FLOOR).mean(dtype=np.float64))


def min_logprob(logprobs: np.ndarray) -> float:
    """Smallest log p of a chosen token, nats, floored at LOGPROB_FLOOR (0 for an empty output)."""
    if len(logprobs) == 0:
        return 0.0
    return float(max(float(logprobs.min()), LOGPROB_FLOOR))


def mean_entropy(entropy: np.ndarray) -> float:
    """Mean entropy of the next-token distributions, nats (0 for an empty output)."""
    if len(entropy) == 0:
        return 0.0
    return float(entropy.mean(dtype=np.float64))


def mean_top_margin(top1_logprob: np.ndarray, top2_logprob: np.ndarray) -> float:
    """Mean of p(top-1) − p(top-2) over steps, in [0, 1] (1 for an empty output).

    A probability margin rather than a log-prob gap: it stays finite when the runner-up has
    probability 0 or was not reported.
    """
    if len(top1_logprob) == 0:
        return 1.0
    margin = np.exp(top1_logprob.astype(np.float64)) - np.exp(top2_logprob.astype(np.float64))
    return float(margin.mean())


def uncertain_fraction(top1_logprob: np.ndarray) -> float:
    """Fraction of steps whose most probable token has probability < 0.5 (0 when empty)."""
    if len(top1_logprob) == 0:
        return 0.0
    return float(np.count_nonzero(top1_logprob < UNCERTAIN_TOP1) / len(top1_logprob))


def stop_one_hot(stop_reason: str) -> np.ndarray:
    """(3,) indicator of why generation ended: eos, stop string, length cap."""
    return one_hot(stop_reason, STOP_REASONS, "stop reason")


# -- stage and verification features ------------------------------------------------------------
def stage_one_hot(stage: int, n_stages: int) -> np.ndarray:
    """(n_stages,) indicator of k."""
    if not 0 <= stage < n_stages:
        raise AsdError(f"stage {stage} is outside 0..{n_stages - 1} of this feature set")
    out = np.zeros(n_stages, dtype=np.float32)
    out[stage] = 1.0
    return out


def previous_acceptance(stage: int, accepted_frac_prev: float) -> tuple[float, float]:
    """(accepted fraction of y_{k-1} under M_k, 1 if that verification happened else 0).

    Stage 0 (or a missing value, e.g. after a skipped stage) gives (0, 0), so no NaN reaches
    the MLP and the indicator tells a real 0 from an absent one.
    """
    if stage == 0 or not math.isfinite(accepted_frac_prev):
        return 0.0, 0.0
    return float(accepted_frac_prev), 1.0


# -- optional hidden-state group ----------------------------------------------------------------
@dataclass(frozen=True)
class HiddenPCA:
    """Per-stage PCA of mean-pooled hidden states (stages differ in width), fitted on training rows."""

    means: tuple[np.ndarray, ...]  # per stage, (d_k,) float32 training mean
    components: tuple[np.ndarray, ...]  # per stage, (HIDDEN_DIMS, d_k) float32, zero rows padded

    def project(self, hidden: np.ndarray, stage: int) -> np.ndarray:
        """(HIDDEN_DIMS,) float32 coordinates of one (d_k,) hidden state of stage ``stage``."""
        mean = self.means[stage]
        if hidden.shape != mean.shape:
            raise AsdError(
                f"hidden state of stage {stage} has shape {hidden.shape}, the PCA expects {mean.shape}"
            )
        return (self.components[stage] @ (hidden - mean)).astype(np.float32)


def fit_hidden_pca(hidden: Sequence[np.ndarray], stages: np.ndarray, n_stages: int) -> HiddenPCA:
    """Fit one PCA per stage on training hidden states ``hidden[i]`` (d_k,) of stage ``stages[i]``.

    Stages with fewer rows (or dimensions) than HIDDEN_DIMS keep what they can and pad zeros.
    """
    from sklearn.decomposition import PCA

    means: list[np.ndarray] = []
    comps: list[np.ndarray] = []
    for k in range(n_stages):
        rows = [
            np.asarray(h, dtype=np.float32) for h, s in zip(hidden, stages, strict=True) if s == k
        ]
        if not rows:
            raise AsdError(
                f"no training rows with a hidden state for stage {k}: cannot fit its PCA"
            )
        X = np.stack(rows)
        n_comp = min(HIDDEN_DIMS, X.shape[0], X.shape[1])
        pca = PCA(n_components=n_comp, svd_solver="full").fit(X)
        padded = np.zeros((HIDDEN_DIMS, X.shape[1]), dtype=np.float32)
        padded[:n_comp] = pca.components_
        means.append(pca.mean_.astype(np.float32))
        comps.append(padded)
    return HiddenPCA(means=tuple(means), components=tuple(comps))


# -- the ordered feature vector -----------------------------------------------------------------
INPUT_NAMES = ("prompt_len_tokens", "prompt_tail_entropy", *(f"task_{t}" for t in TASKS))
OUTPUT_NAMES = (
    "out_len_ratio",
    "out_mean_logprob",
    "out_min_logprob",
    "out_mean_entropy",
    "out_mean_top_margin",
    "out_uncertain_frac",
    *(f"stop_{r}" for r in STOP_REASONS),
)
VERIFICATION_NAMES = ("prev_accepted_frac", "prev_verified")


@dataclass(frozen=True)
class FeatureSet:
    """The ordered features for a hierarchy of ``n_stages`` stages.

    ``use_hidden`` adds the hidden group; extraction then needs ``hidden`` (see :meth:`fit_hidden`).
    """

    n_stages: int  # K, stages in the hierarchy (sets the stage one-hot width)
    use_hidden: bool = False  # add the 32-dim PCA of the mean-pooled hidden state
    hidden: HiddenPCA | None = None  # the fitted projection when use_hidden

    def __post_init__(self) -> None:
        if self.n_stages < 1:
            raise AsdError(f"feature set needs at least one stage, got n_stages={self.n_stages}")

    @property
    def version(self) -> str:
        return FEATURE_VERSION

    @cached_property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """Feature names per group, in vector order (used by the ablation)."""
        groups = {
            "input": INPUT_NAMES,
            "output": OUTPUT_NAMES,
            "stage": tuple(f"stage_{k}" for k in range(self.n_stages)),
            "verification": VERIFICATION_NAMES,
        }
        if self.use_hidden:
            groups["hidden"] = tuple(f"hidden_pc{i:02d}" for i in range(HIDDEN_DIMS))
        return groups

    @cached_property
    def names(self) -> tuple[str, ...]:
        """All feature names in vector order."""
        return tuple(name for group in self.groups.values() for name in group)

    @cached_property
    def n_features(self) -> int:
        """F, the length of :meth:`extract`'s vector."""
        return len(self.names)

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of :meth:`input_features`, the input-only head's vector."""
        return INPUT_NAMES

    def fit_hidden(self, df: pd.DataFrame) -> FeatureSet:
        """A copy with the hidden PCA fitted on the training rows of ``df`` (needs ``hidden_mean``)."""
        if "hidden_mean" not in df.columns or df["hidden_mean"].isna().any():
            raise AsdError(
                "use_hidden needs a hidden_mean for every training row; regenerate with it"
            )
        pca = fit_hidden_pca(list(df["hidden_mean"]), df["stage"].to_numpy(), self.n_stages)
        return FeatureSet(n_stages=self.n_stages, use_hidden=True, hidden=pca)

    def input_features(self, prompt_ids: Sequence[int] | np.ndarray, task: str) -> np.ndarray:
        """(len(input_names),) float32 features known before any model runs."""
        ids = np.asarray(prompt_ids)
        out = np.empty(len(INPUT_NAMES), dtype=np.float32)
        out[0] = prompt_length(ids)
        out[1] = prompt_tail_entropy(ids)
        out[2:] = task_one_hot(task)
        return out

    def extract(self, view: StageView) -> np.ndarray:
        """(F,) float32 feature vector of one stage output, in :attr:`names` order."""
        K = self.n_stages
        out = np.empty(self.n_features, dtype=np.float32)
        i = len(INPUT_NAMES)
        out[:i] = self.input_features(view.prompt_ids, view.task)
        out[i] = length_ratio(view.n_out, len(view.prompt_ids))
        out[i + 1] = mean_logprob(view.logprobs)
        out[i + 2] = min_logprob(view.logprobs)
        out[i + 3] = mean_entropy(view.entropy)
        out[i + 4] = mean_top_margin(view.top1_logprob, view.top2_logprob)
        out[i + 5] = uncertain_fraction(view.top1_logprob)
        out[i + 6 : i + 9] = stop_one_hot(view.stop_reason)
        i += len(OUTPUT_NAMES)
        out[i : i + K] = stage_one_hot(view.stage, K)
        i += K
        out[i : i + 2] = previous_acceptance(view.stage, view.accepted_frac_prev)
        i += 2
        if self.use_hidden:
            if self.hidden is None:
                raise AsdError(
                    "feature set uses hidden states but its PCA is not fitted (fit_hidden)"
                )
            if view.hidden_mean is None:
                raise AsdError(f"stage {view.stage} output has no hidden_mean but use_hidden is on")
            out[i:] = self.hidden.project(view.hidden_mean, view.stage)
        return out

    def extract_frame(self, df: pd.DataFrame) -> np.ndarray:
        """(N, F) float32 features of every row of a generations frame, in row order."""
        X = np.empty((len(df), self.n_features), dtype=np.float32)
        columns = [c for c in _ROW_COLUMNS if c in df.columns]
        for r, values in enumerate(zip(*(df[c].to_numpy() for c in columns), strict=True)):
            X[r] = self.extract(StageView.from_row(dict(zip(columns, values, strict=True))))
        return X

    def input_frame(self, df: pd.DataFrame) -> np.ndarray:
        """(N, len(input_names)) float32 input-only features of every row (its own prompt_ids)."""
        X = np.empty((len(df), len(INPUT_NAMES)), dtype=np.float32)
        for r, (ids, task) in enumerate(zip(df["prompt_ids"], df["task"], strict=True)):
            X[r] = self.input_features(ids, str(task))
        return X


_ROW_COLUMNS = (
    "prompt_ids",
    "token_ids",
    "logprobs",
    "entropy",
    "top1_logprob",
    "top2_logprob",
    "stop_reason",
    "stage",
    "task",
    "accepted_frac_prev",
    "hidden_mean",
)
