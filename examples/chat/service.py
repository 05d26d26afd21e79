"""An OpenAI-compatible chat service around the byte-level GRU of this example.

`POST /v1/chat/completions` answers a `chat.completion`, or with `"stream": true` a generator of
`chat.completion.chunk` events that maserve sends as Server-Sent Events (the api's response type
in config.json is text/event-stream), ending with a usage chunk and `[DONE]`. `GET /v1/models`
lists the one model. The request schema in config.json is checked by maserve before `predict`;
the checks here repeat what a direct caller (warm-up, tests) could still get wrong.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from generator import TURN_STOPS, ByteLM, Completion, messages_to_prompt

from maserve import Inputs, InvalidInput, Model

# The name answered in `model` fields and by /v1/models; requests may name any model.
MODEL_NAME = os.environ.get("MASERVE_CHAT_MODEL_NAME", "maserve-byte-gru")
DEFAULT_MAX_TOKENS = 64
MAX_TOKENS = 512
MAX_STOPS = 4


@dataclass(frozen=True)
class ChatRequest:
    """The fields of an OpenAI chat request this model uses, defaults applied."""

    prompt: str
    max_tokens: int
    temperature: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool


class ChatService(Model):
    """OpenAI chat completions (streamed or not) and the model list, from one ONNX GRU."""

    def load(self) -> None:
        self.lm = ByteLM(self.model_dir / "model.onnx")
        self.created = int(time.time())

    def warmup(self) -> None:
        """A short greedy generation: the first caller pays no lazy initialisation."""
        self.predict(Inputs(fields={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4,
                                    "temperature": 0}, url="/v1/chat/completions", method="POST"))

    def predict(self, inputs: Inputs) -> dict[str, Any] | Iterator[dict[str, Any] | str]:
        if inputs.url == "/v1/models":
            return self.models()
        request = read_request(inputs.fields)
        try:
            completion = self.lm.generate(request.prompt, request.max_tokens, request.temperature,
                                          request.stop, request.seed)
        except ValueError as exc:
            raise InvalidInput(str(exc), error_code="MASERVE.PROMPT_TOO_LONG") from None
        reply_id, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if request.stream:
            return self.chunks(completion, reply_id, created)
        content = "".join(completion)
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": MODEL_NAME,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": completion.finish_reason}],
            "usage": completion.usage,
        }

    def chunks(self, completion: Completion, reply_id: str, created: int) -> Iterator[dict[str, Any] | str]:
        """The stream: the role, one chunk per piece of text, the finish reason, the usage, [DONE].

        Lazy: each piece is generated when the server asks for the next event, so a client that
        goes away (the server closes this generator) stops the generation. The usage chunk
        (`choices: []`) is always sent, whatever `stream_options.include_usage` says: ModelArts
        reads it from the last chunk for its token metrics, and OpenAI clients accept it.
        """
        def chunk(delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
            return {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": MODEL_NAME,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        try:
            yield chunk({"role": "assistant", "content": ""}, None)
            for piece in completion:
                yield chunk({"content": piece}, None)
            yield chunk({}, completion.finish_reason)
            yield {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": MODEL_NAME,
                   "choices": [], "usage": completion.usage}
            yield "[DONE]"
        finally:
            completion.close()

    def models(self) -> dict[str, Any]:
        return {"object": "list",
                "data": [{"id": MODEL_NAME, "object": "model", "created": self.created, "owned_by": "maserve"}]}


def read_request(fields: dict[str, Any]) -> ChatRequest:
    """The request's fields with OpenAI's defaults; InvalidInput for what this model cannot use.
    `max_completion_tokens` (OpenAI's newer name) wins over `max_tokens`; null means unset."""
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidInput("'messages' must be a non-empty list of {role, content} objects",
                           error_code="MASERVE.INVALID_FIELD")
    try:
        prompt = messages_to_prompt(messages)
    except ValueError as exc:
        raise InvalidInput(str(exc), error_code="MASERVE.INVALID_FIELD") from None
    max_tokens = _as_int(_get(fields, "max_completion_tokens", _get(fields, "max_tokens", DEFAULT_MAX_TOKENS)))
    if not _is_int(max_tokens) or not 1 <= max_tokens <= MAX_TOKENS:
        raise InvalidInput(f"'max_tokens' must be an integer from 1 to {MAX_TOKENS}, got {max_tokens!r}",
                           error_code="MASERVE.INVALID_FIELD")
    temperature = _get(fields, "temperature", 1.0)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise InvalidInput(f"'temperature' must be a number from 0 to 2, got {temperature!r}",
                           error_code="MASERVE.INVALID_FIELD")
    stop = _get(fields, "stop", [])
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(s, str) for s in stop):
        raise InvalidInput(f"'stop' must be a string or a list of at most {MAX_STOPS} strings",
                           error_code="MASERVE.INVALID_FIELD")
    seed = _as_int(_get(fields, "seed", None))
    if seed is not None and not _is_int(seed):
        raise InvalidInput(f"'seed' must be an integer, got {seed!r}", error_code="MASERVE.INVALID_FIELD")
    return ChatRequest(prompt=prompt, max_tokens=max_tokens, temperature=float(temperature),
                       stop=(*stop, *TURN_STOPS), seed=seed, stream=_get(fields, "stream", False) is True)


def _get(fields: dict[str, Any], name: str, default: Any) -> Any:
    value = fields.get(name)
    return default if value is None else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value: Any) -> Any:
    """JSON Schema's integers include 493.0 (so does the request check): take it as 493."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
