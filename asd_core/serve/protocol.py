"""The wire format: OpenAI's request and response bodies, plus the adaptive pipeline's extension.

Requests are parsed by hand from bytes (:func:`parse_body`) so that every bad input — bytes that
are not UTF-8, text that is not JSON, a field of the wrong type — becomes one
:class:`~asd_core.serve.engine.RequestError` naming the field. Extension fields of a request:
``lambda`` (the quality-loss weight, > 0), ``depth`` (force one stage alone), ``task`` (the task
profile whose features and costs the policy uses). The response's ``asd`` object says what the
pipeline did: the path, the depth, each stage's latency, accepted prefixes, decision overhead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from asd_core.decoding.pipeline import Trace
from asd_core.ground.config import TaskName
from asd_core.serve.engine import RequestError
from asd_core.serve.scheduler import Job

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # our stop reasons → OpenAI's


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class _Common(BaseModel):
    # OpenAI clients send fields this greedy pipeline has no use for (temperature, n=1, ...)
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    model: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    lam: float | None = Field(None, gt=0, alias="lambda")  # the quality-loss weight
    depth: Annotated[int, Field(ge=0)] | None = None
    task: TaskName | None = None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatBody(_Common):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


class CompletionBody(_Common):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def _field(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def parse_body(raw: bytes, model: type[_Common]) -> Any:
    """The validated body, or a :class:`RequestError` naming the field."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"the body is not UTF-8 (byte {exc.start})", "body") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"the body is not JSON ({exc.msg} at char {exc.pos})", "body") from None
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object", "body")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        name = _field(first.get("loc", ()))
        msg = str(first.get("msg", "invalid value"))
        raise RequestError(f"'{name}': {msg}", name) from None


def visible_text(text: str, stops: Sequence[str]) -> str:
    """The text a client sees: cut before the first stop string (OpenAI leaves it out)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def extension(job: Job, stage_names: Sequence[str]) -> dict[str, Any]:
    """The ``asd`` object of a response: what the pipeline did for this request."""
    trace: Trace | None = job.trace
    assert trace is not None
    return {
        "lambda": job.lam if job.depth is None else None,
        "forced_depth": job.depth,
        "task": trace.request.task,
        "path": [stage_names[k] for k in trace.path],
        "depth": trace.depth,
        "depth_name": stage_names[trace.depth],
        "moves": [
            "entry"
            if r.from_stage is None and i == 0
            else ("restart" if r.from_stage is None else "continue")
            for i, r in enumerate(trace.runs)
        ],  # fmt: skip
        "stage_latency_s": {stage_names[r.stage]: round(r.latency_s, 6) for r in trace.runs},
        "accepted_prefix_tokens": {
            stage_names[r.stage]: r.n_accepted for r in trace.runs if r.from_stage is not None
        },
        "drafted_tokens": {
            stage_names[r.stage]: r.n_draft for r in trace.runs if r.from_stage is not None
        },
        "decision_overhead_s": round(trace.decision_s, 6),
        "queue_s": round(max(job.finished - job.arrived - trace.latency_s, 0.0), 6),
        "latency_s": round(job.finished - job.arrived, 6),
        "batch_sizes": list(job.batches),
    }


def usage(job: Job) -> dict[str, int]:
    trace = job.trace
    assert trace is not None
    prompt = len(trace.runs[-1].prompt_ids)
    done = trace.output.n_out
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def response(
    job: Job, text: str, model: str, stage_names: Sequence[str], chat: bool, response_id: str
) -> dict[str, Any]:
    """The whole (non-streaming) response body."""
    assert job.trace is not None
    finish = FINISH[job.trace.output.stop_reason]
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": response_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(job),
        "asd": extension(job, stage_names),
    }


def chunk(
    response_id: str, model: str, chat: bool, delta: str | None, finish: str | None = None,
    extra: dict[str, Any] | None = None, first: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One streamed chunk (``chat.completion.chunk`` or a ``text_completion`` piece)."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        d: dict[str, Any] = {"role": "assistant"} if first else {}
        if delta is not None:
            d["content"] = delta
        choice["delta"] = d
    else:
        choice["text"] = delta or ""
    body = {
        "id": response_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
    return body | (extra or {})


def error_body(message: str, param: str | None, code: str, status: int) -> dict[str, Any]:
    """OpenAI's error shape."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
