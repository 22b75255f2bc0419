"""The serving parameter file (``params/serving.yaml``): flat keys, validated on load.

Every mistake is one :class:`~asd_core.ground.errors.ConfigError` line naming the file and the key,
as for the run profiles (:mod:`asd_core.ground.config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from asd_core.ground.config import StageConfig, TaskName, first_error, read_yaml
from asd_core.ground.errors import ConfigError

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class ServingSettings(BaseModel):
    """Everything the server reads. One field per YAML key."""

    model_config = ConfigDict(extra="forbid", strict=True)

    host: str = "127.0.0.1"  # address to listen on (loopback: this machine only)
    port: Annotated[int, Field(ge=0, le=65535)] = 8000  # TCP port; 0 picks a free one
    model_name: Annotated[str, Field(min_length=1)] = "asd"  # the adaptive pipeline's model id
    policy_file: str  # the policy notebook 03 saved (its stages must equal ``stages``)
    stages: Annotated[list[StageConfig], Field(min_length=1)]  # the hierarchy, cheapest first
    models_dir: str = "models"  # weights folder (embedded packages are assembled here)
    default_lambda: PositiveFloat = 1.0  # λ of a request that names none
    default_task: TaskName = "truthfulqa"  # the task profile (features, costs) of a request
    label_mode: str = "answer"  # acceptance label the policy must have learned
    max_batch: PositiveInt = 8  # requests one stage runs at once
    max_wait_ms: Annotated[float, Field(ge=0)] = 20.0  # how long a partial batch waits for more
    max_tokens_default: PositiveInt = 256  # max_tokens of a request that names none
    max_tokens_limit: PositiveInt = 1024  # the most a request may ask for
    top_k: Annotated[int, Field(ge=2)] = 2  # alternatives per token (the features read two)
    kv_budget_tokens: Annotated[int, Field(ge=0)] = 0  # per stage, tokens of key/value memory
    # the requests in one batch may hold (prompt + max_tokens each); 0: what the stage allocated
    cost_ema_rate: Annotated[float, Field(gt=0, le=1)] = 0.1  # weight of one observed latency
    cost_resolve_fraction: PositiveFloat = 0.2  # re-solve the tables when a relative cost moves
    # by more than this
    log_file: str = "artifacts/serve/server.log"  # request and error log (also on the console)
    log_level: str = "INFO"  # logging level of the server's loggers
    graceful_shutdown_s: PositiveFloat = 60.0  # SIGTERM: longest wait for in-flight requests

    @model_validator(mode="after")
    def _limits(self) -> ServingSettings:
        if self.max_tokens_default > self.max_tokens_limit:
            raise ValueError(
                f"key 'max_tokens_default' ({self.max_tokens_default}) exceeds "
                f"'max_tokens_limit' ({self.max_tokens_limit})"
            )
        names = [s.name for s in self.stages]
        if self.model_name in names:
            raise ValueError(f"key 'model_name' {self.model_name!r} is also a stage's name")
        return self


def settings_from(values: Mapping[str, Any], origin: str = "serving settings") -> ServingSettings:
    """Validated settings from a mapping; one-line error naming ``origin`` and the key."""
    try:
        return ServingSettings.model_validate(dict(values))
    except ValidationError as err:
        raise ConfigError(first_error(err, {k: origin for k in values})) from None


def load_settings(path: str | Path, **overrides: Any) -> ServingSettings:
    """Read and validate a serving file; ``overrides`` (e.g. ``port``) replace its keys."""
    values = read_yaml(path)
    return settings_from({**values, **overrides}, str(path))
