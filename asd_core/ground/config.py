"""Parameters: layered YAML files, validated on load.

``params/base.yaml`` holds what every profile shares and one profile file (``smoke``, ``cpu``,
``paper``) overrides it; the merge is shallow (a later file replaces a whole key), as papermill's
``-f a.yaml -f b.yaml`` does, so keys stay flat. Every mistake becomes one :class:`ConfigError`
line naming the file and the key.

Run ``python -m asd_core.ground.config params/base.yaml params/cpu.yaml`` to check a combination.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from asd_core.ground.errors import ConfigError, cli_entry

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]
TaskName = Literal["mmlu", "humaneval", "asdiv", "truthfulqa", "gsm8k"]
Runtime = Literal["transformers", "llamacpp", "vllm"]
DType = Literal["auto", "bfloat16", "float16", "float32"]


class StageConfig(BaseModel):
    """One model of the hierarchy, as written in a profile's ``stages`` list."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Annotated[str, Field(min_length=1)]  # short label used in tables and figures
    # where the weights come from: "package:<asset>" (embedded), "tiny:<spec>" (random, made on
    # the fly), a local folder or .gguf file, or a Hugging Face hub id (needs network)
    source: Annotated[str, Field(min_length=1)]
    runtime: Runtime  # which Backend runs it (see asd_core.models.registry)
    dtype: DType = "bfloat16"  # compute dtype for transformers/vLLM; GGUF runs its own quant
    tensor_parallel_size: PositiveInt = 1  # GPUs this stage is sharded over (vLLM only)
    context_length: Annotated[int, Field(ge=16)] = 4096  # max prompt + output tokens
    threads: Annotated[int, Field(ge=0)] = 0  # CPU threads for llama.cpp/torch; 0 = all cores
    # score (verify) one token at a time, bit-identical to generation; batched scoring is several
    # times faster but its kernels round differently, which can flip near-tie tokens
    exact_scoring: bool = False
    # sequences decoded together (llama.cpp: one key/value slot each, allocated at load)
    max_batch: PositiveInt = 8
    # verification and resumed outputs start from the prompt's keys/values when the stage
    # still holds them (its own generation of that prompt); false recomputes the prompt
    reuse_prompts: bool = True


class Params(BaseModel):
    """Every parameter a notebook or runner reads. One field per YAML key."""

    model_config = ConfigDict(extra="forbid", strict=True)
    # set by notebook_params: the keys a notebook was given (the digest covers only those)
    _declared: frozenset[str] | None = PrivateAttr(default=None)

    profile: Annotated[str, Field(min_length=1)]  # name of the profile; output folders use it
    seed: Annotated[int, Field(ge=0)]  # master seed for every random generator
    stages: Annotated[list[StageConfig], Field(min_length=1)]  # cheapest first
    lambdas: Annotated[list[PositiveFloat], Field(min_length=1)]  # quality-loss weights λ
    num_gpus: Annotated[int, Field(ge=0)] = 0  # GPUs available to the run (all nodes)
    models_dir: str = "models"  # assembled and converted weights (gitignored)
    data_dir: str = "data"  # generated datasets (gitignored)
    artifacts_dir: str = "artifacts"  # trained predictors, caches (gitignored)
    reports_dir: str = "reports"  # tables, figures, executed notebooks
    profile_input_lengths: Annotated[list[PositiveInt], Field(min_length=2)] = [32, 128]
    profile_output_lengths: Annotated[list[PositiveInt], Field(min_length=2)] = [8, 32]
    profile_repeats: PositiveInt = 2  # timed repeats per grid cell
    profile_warmup: Annotated[int, Field(ge=0)] = 1  # untimed runs before timing a stage
    profile_min_r2: Annotated[float, Field(ge=0, le=1)] = 0.8  # a latency fit below: disturbed
    profile_strict: bool = True  # a disturbed cost model stops notebook 01 instead of a warning
    # -- tasks and labels (docs/design.md §3, §10) --
    tasks: Annotated[list[TaskName], Field(min_length=1)] = [
        "mmlu",
        "humaneval",
        "asdiv",
        "truthfulqa",
    ]  # datasets used for training and evaluation
    split_fractions: Annotated[list[UnitFloat], Field(min_length=3, max_length=3)] = [
        0.6,
        0.2,
        0.2,
    ]  # predictor-train / calibration / test shares (stable hash of the item id)
    label_mode: Literal["answer", "token"] = "answer"  # acceptance label the predictor learns
    # -- data generation (notebook 02) --
    datagen_train_per_task: Annotated[int, Field(ge=0)] = (
        20  # items per task, train split (at most)
    )
    datagen_calibration_per_task: Annotated[int, Field(ge=0)] = 8  # calibration split (at most)
    datagen_test_per_task: Annotated[int, Field(ge=0)] = 12  # test split (at most)
    datagen_shard_size: PositiveInt = 4  # items per Parquet shard; a kill loses at most one shard
    datagen_batch_size: PositiveInt = 1  # prompts per generate/score call; 1 = per-input latency
    # > 0: every n-th shard runs one sequence at a time, no prompt reuse (checks the cost model)
    datagen_solo_every: Annotated[int, Field(ge=0)] = 0
    datagen_top_k: Annotated[int, Field(ge=2)] = 2  # alternatives kept per generated token
    datagen_return_hidden: bool = False  # store each output's mean final-layer hidden state
    # token budget of each task (every task in ``tasks`` needs one), measured with
    # ``python -m asd_core.runs.budgets`` (README, "Token budgets")
    datagen_max_new_tokens: dict[TaskName, PositiveInt]
    datagen_stop_strings: dict[TaskName, list[str]] = {}  # task: stop strings instead of the task's
    # own (asd_core.data.tasks); [] generates to EOS or the budget
    # multiple choice (MMLU): "loglik" picks the most probable option letter in one pass,
    # "generate" writes a reply and reads the letter out of it
    datagen_mc_scoring: Literal["loglik", "generate"] = "loglik"
    datagen_task_sources: dict[TaskName, str] = {}  # task: local file or hub id (not the package)
    # task: unlabelled training prompts from its family's pools (asd_core.data.pools; split
    # "train", never evaluated); ``python -m asd_core.data pools --profile P`` shows the draw
    datagen_pool_per_task: dict[TaskName, Annotated[int, Field(ge=0)]] = {}
    datagen_pools: list[str] | None = None  # draw from these pools only (None: the packaged ones)
    datagen_pool_sources: dict[str, str] = {}  # pool: local file or hub id (e.g. mbpp offline)
    datagen_verify_early_exit: bool = True  # verifiers stop scoring after the first mismatch
    # block; false scores whole drafts (the old data generation, kept for its benchmark)
    # -- quality predictor (docs/design.md §5) --
    predictor_hidden_sizes: Annotated[list[PositiveInt], Field(min_length=1)] = [
        64,
        64,
    ]  # MLP trunk
    predictor_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1  # after each trunk layer
    predictor_lr: PositiveFloat = 1e-3  # AdamW learning rate
    predictor_weight_decay: Annotated[float, Field(ge=0)] = 1e-4  # AdamW weight decay
    predictor_batch_size: PositiveInt = 128  # rows per optimiser step
    predictor_max_epochs: PositiveInt = 200  # epoch cap before early stopping
    predictor_patience: PositiveInt = 10  # epochs without a better calibration loss, then stop
    predictor_members: PositiveInt = 5  # deep-ensemble size
    predictor_calibration: Literal["temperature", "isotonic", "none"] = "temperature"
    predictor_input_stage: Annotated[int, Field(ge=0)] = (
        0  # stage whose tokens the entry head reads
    )
    predictor_use_hidden: bool = False  # add the 32-dim PCA of the mean hidden state
    predictor_bootstrap_resamples: PositiveInt = 1000  # bootstrap resamples for metric CIs
    # -- risk adjustment and optimal stopping (docs/design.md §6, §7) --
    risk_alpha: Annotated[float, Field(ge=0)] = 10.0  # prior strength, pseudo-observations
    risk_beta: Annotated[float, Field(gt=0, le=0.5)] = 0.5  # 0.5: posterior mean; lower: quantile
    risk_n_max: Annotated[float, Field(ge=1)] = 1000.0  # cap on the effective sample size
    belief_bins: PositiveInt = 10  # most belief bins per (stage, view), cut at quantiles
    # pseudo-inputs pulling a sparse bin's value, moves and costs to what is known overall
    belief_smoothing: Annotated[float, Field(ge=0)] = 1.0
    entry_neighbours: PositiveInt = 25  # held-out inputs the entry decision compares with
    dense_lambdas: Annotated[int, Field(ge=0)] = 30  # λ on the DP curves at least (0: lambdas)
    cost_mode: Literal["table", "per_input"] = "table"  # solved table, or re-solve per input
    # what replay and the solver count as cost: seconds measured in data generation, seconds the
    # cost model of notebook 01 predicts for one sequence alone ("model": for batched generation),
    # or size × tokens (deterministic, for profiles whose timings are noise, like smoke)
    cost_source: Literal["measured", "model", "flops"] = "measured"
    # -- evaluation (docs/design.md §10) --
    eval_seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = [1, 2, 3, 4, 5]
    # cross-fitting: items dealt into folds by a stable hash; each fold is evaluated by methods
    # fitted on the others
    eval_folds: Annotated[int, Field(ge=2)] = 5
    # λ confirmed online, picked where the replayed policy takes two paths and escalates
    online_lambda_count: Annotated[int, Field(ge=0)] = 2
    online_inputs: Annotated[int, Field(ge=0)] = 40  # test inputs run online per λ (0 = skip)
    # -- analysis (notebook 05) --
    analysis_bootstrap_resamples: PositiveInt = 1000  # bootstrap resamples per CI
    analysis_alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05  # Holm error rate; CIs are 1 − α
    analysis_ci_method: Literal["percentile", "BCa", "basic"] = "percentile"  # bootstrap CI kind
    headline_method: Annotated[str, Field(min_length=1)] = "dp"  # method of the headline table
    stage_sizes: list[PositiveFloat] = []  # parameters (billions) per stage, for the size-cost
    # ablation; empty = 1, 2, … K

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Params:
        if abs(sum(self.split_fractions) - 1.0) > 1e-9:
            raise ValueError(f"key 'split_fractions': {self.split_fractions} must sum to 1")
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"key 'stages': stage names must be unique, repeated: {dupes}")
        for i, stage in enumerate(self.stages):
            if stage.tensor_parallel_size > 1 and stage.runtime != "vllm":
                raise ValueError(
                    f"key 'stages[{i}].tensor_parallel_size': {stage.tensor_parallel_size} needs runtime vllm"
                )
            if stage.runtime == "vllm" and stage.tensor_parallel_size > max(self.num_gpus, 1):
                raise ValueError(
                    f"key 'stages[{i}].tensor_parallel_size': {stage.tensor_parallel_size} is larger than "
                    f"num_gpus={self.num_gpus}"
                )
        if self.stage_sizes and len(self.stage_sizes) != len(self.stages):
            raise ValueError(
                f"key 'stage_sizes': {len(self.stage_sizes)} sizes for {len(self.stages)} stages"
            )
        missing = [t for t in self.tasks if t not in self.datagen_max_new_tokens]
        if missing:
            raise ValueError(
                f"key 'datagen_max_new_tokens': no token budget for task '{missing[0]}' "
                "(measure one: python -m asd_core.runs.budgets)"
            )
        if self.predictor_input_stage >= len(self.stages):
            raise ValueError(
                f"key 'predictor_input_stage': {self.predictor_input_stage} is not a stage index"
            )
        return self

    def digest(self) -> str:
        """Short stable hash of the parameters, recorded in provenance sidecars.

        Of every field for a complete set; of the keys it was given for a notebook's.
        """
        if self._declared is None:
            values = self.model_dump(mode="json")
        else:
            values = self.model_dump(mode="json", include=set(self._declared))
        blob = json.dumps(values, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def present(self) -> dict[str, Any]:
        """Every field that has a value: given, or defaulted (a notebook's required keys it
        was not given are absent)."""
        return {k: getattr(self, k) for k in type(self).model_fields if k in self.__dict__}


def default(key: str) -> Any:
    """The default of parameter ``key``: :class:`Params` is the one source of defaults."""
    field = Params.model_fields.get(key)
    if field is None or field.is_required():
        raise ConfigError(f"key '{key}': no default (unknown or required)")
    return copy.deepcopy(field.get_default(call_default_factory=True))


def notebook_params(namespace: Mapping[str, Any]) -> Params:
    """The parameters a notebook was given, validated, as a typed :class:`Params`.

    papermill injects a notebook's parameters as variables: pass ``globals()``. Every name in it
    that is a parameter key is validated (:func:`validate_subset`: one-line :class:`ConfigError`
    naming the key); keys it was not given take their defaults, and a required key it was not
    given is absent (reading it raises ``AttributeError`` naming it). The provenance digest
    covers exactly the keys it was given.
    """
    given = {k: v for k, v in namespace.items() if k in Params.model_fields}
    values = validate_subset(**given)
    defaults = {
        k: copy.deepcopy(f.get_default(call_default_factory=True))
        for k, f in Params.model_fields.items()
        if not f.is_required() and k not in values
    }
    params = Params.model_construct(_fields_set=set(values), **defaults, **values)
    params._declared = frozenset(values)
    return params


def first_error(err: ValidationError, origin: Mapping[str, str]) -> str:
    """Turn pydantic's multi-line report into one line: ``file: key: problem``."""
    first = err.errors()[0]
    loc = first.get("loc", ())
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    where = origin.get(str(loc[0]), "params") if loc else "params"
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:  # a cross-field check: its message names the key (the file that set it)
        named = re.match(r"key '([^'\[.]+)", msg)
        return f"{origin.get(named.group(1) if named else 'stages', 'params')}: {msg}"
    if first.get("type") == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first.get("type") != "missing":
        msg = f"{msg} (got {first['input']!r})"
    if not key:
        return f"{where}: {msg}"
    return f"{where}: key '{key}': {msg}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read one parameter file; it must be a mapping of flat keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of keys to values")
    return data


def merge_files(paths: Sequence[str | Path]) -> tuple[dict[str, Any], dict[str, str]]:
    """Shallow-merge YAML files left to right; also return which file set each key."""
    if not paths:
        raise ConfigError("no parameter files given")
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for path in paths:
        for key, value in read_yaml(path).items():
            merged[key] = value
            origin[str(key)] = str(path)
    return merged, origin


def validate(values: Mapping[str, Any], origin: Mapping[str, str] | None = None) -> Params:
    """Validate a complete set of parameters; raise one-line :class:`ConfigError`."""
    try:
        return Params.model_validate(dict(values))
    except ValidationError as err:
        raise ConfigError(first_error(err, origin or {})) from None


def load(paths: Sequence[str | Path]) -> Params:
    """Load and validate layered parameter files (``base.yaml`` first, then a profile)."""
    merged, origin = merge_files(paths)
    return validate(merged, origin)


def validate_subset(**values: Any) -> dict[str, Any]:
    """Validate just the keys a notebook uses (papermill injects them as variables).

    Unknown keys, wrong types and impossible values raise :class:`ConfigError`; stages come
    back as :class:`StageConfig`. Cross-field checks run when their keys are all present.
    """
    fields = Params.model_fields
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"notebook parameters: key '{key}': unknown key")
        field = fields[key]
        kind: Any = (
            Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
        )
        adapter: TypeAdapter[Any] = TypeAdapter(kind, config=ConfigDict(strict=True))
        try:
            out[key] = adapter.validate_python(value)
        except ValidationError as err:
            raise ConfigError(first_error(_prefix(err, key), {})) from None
    if "stages" in out:
        budgets = {t: 1 for t in get_args(TaskName)}  # required key, irrelevant to the check
        probe = {"profile": "x", "seed": 0, "lambdas": [1.0], "datagen_max_new_tokens": budgets}
        probe.update(out)
        validate(probe)
    return out


def _prefix(err: ValidationError, key: str) -> ValidationError:
    """Re-root a field-level validation error at ``key`` so messages name it."""
    errors = [{**e, "loc": (key, *e.get("loc", ()))} for e in err.errors()]
    return ValidationError.from_exception_data(err.title, errors)  # type: ignore[arg-type]


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m asd_core.ground.config", description="Check layered parameter files."
    )
    parser.add_argument("files", nargs="+", help="YAML files, base first")
    parser.add_argument("--print", action="store_true", help="print the merged parameters")
    args = parser.parse_args(argv)
    params = load(args.files)
    if args.print:
        print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    else:
        print(
            f"ok: profile '{params.profile}', {len(params.stages)} stages, digest {params.digest()}"
        )


if __name__ == "__main__":
    main()
