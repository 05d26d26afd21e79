"""Token-by-token generation with the byte-level GRU in model.onnx: numpy and onnxruntime only.

The model's graph takes `input_ids` int64 [1, T] (bytes, 0..255) and `state` float32 (the GRU's
hidden state [layers, 1, hidden], zeros at the start) and returns `logits` float32 [1, T, 256]
(the next-byte scores after every position) and `next_state`. Generation runs the whole prompt in
one call (prefill), then feeds back one sampled byte and the state per step, so each step costs
one small GRU cell and nothing grows with the length of the text.

Tokens are bytes: prompt tokens are the prompt's UTF-8 bytes, completion tokens the bytes sampled.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

VOCAB = 256
# Longer prompts are refused: prefill is sequential in T, and the GRU remembers little that far back.
MAX_PROMPT_BYTES = 16384
# The prefill input for an empty prompt (the model needs one byte to predict the next): a newline,
# which in the corpus starts a line.
EMPTY_PROMPT = b"\n"
# The plain-text chat template: one "Role: content" line per message, then the assistant's cue.
ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
ASSISTANT_CUE = "Assistant: "
# Generation also ends where the model starts writing the user's next turn (end of its own turn).
TURN_STOPS = ("\nUser:",)


def messages_to_prompt(messages: Sequence[dict[str, Any]]) -> str:
    """OpenAI chat `messages` → the prompt: `System: ...\\nUser: ...\\nAssistant: ...\\n` lines
    in order, then `Assistant: ` for the model to continue. `developer` counts as `system`;
    content is a string, null, or a list of `{"type": "text", "text": ...}` parts (joined).
    Raises ValueError for a role or content part it cannot render."""
    lines = []
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLE_NAMES:
            raise ValueError(f"messages[{index}]: role must be one of {', '.join(ROLE_NAMES)}, got {role!r}")
        lines.append(f"{ROLE_NAMES[role]}: {_content_text(message.get('content'), index)}\n")
    return "".join(lines) + ASSISTANT_CUE


def _content_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"messages[{index}].content: only text parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise ValueError(f"messages[{index}].content must be a string or a list of text parts")


class ByteLM:
    """model.onnx loaded once; `generate` may be called from several threads at a time (an
    onnxruntime session is thread-safe and each generation keeps its own state)."""

    def __init__(self, path: Path | str) -> None:
        options = ort.SessionOptions()
        # One thread: the server runs one worker per core already; a pool per call would fight it.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        state = next(i for i in self.session.get_inputs() if i.name == "state")
        self.state_shape = tuple(int(d) for d in state.shape)

    def zero_state(self) -> np.ndarray:
        return np.zeros(self.state_shape, dtype=np.float32)

    def step(self, ids: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run bytes `ids` (int64 [1, T]) from `state`: the logits after the last byte, the new state."""
        logits, next_state = self.session.run(None, {"input_ids": ids, "state": state})
        return logits[0, -1], next_state

    def generate(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> Completion:
        """The completion of `prompt`, produced lazily as it is iterated (see Completion).
        Raises ValueError for arguments it cannot use, before anything runs."""
        ids = prompt.encode("utf-8", errors="surrogatepass")
        if len(ids) > MAX_PROMPT_BYTES:
            raise ValueError(f"the prompt is {len(ids)} bytes; at most {MAX_PROMPT_BYTES} are accepted")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if not 0 <= temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        return Completion(self, ids, max_tokens, temperature, [s for s in stop if s], seed)


class Completion(Iterator[str]):
    """An iterator of text pieces (whole characters, stop strings left out); nothing runs until
    the first `next()`, and each `next()` generates only the bytes that make its piece, so a
    consumer that stops asking (or calls `close()`) stops the generation.

    Once exhausted: `finish_reason` is "stop" (a stop string was generated) or "length"
    (max_tokens bytes were); `prompt_tokens` / `completion_tokens` count bytes for `usage`
    (the bytes of a matched stop string were generated, so they are counted).
    """

    def __init__(self, lm: ByteLM, ids: bytes, max_tokens: int, temperature: float, stop: list[str],
                 seed: int | None) -> None:
        self.prompt_tokens = len(ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        rng = np.random.default_rng(None if seed is None else seed % 2**64)  # OpenAI seeds may be negative
        self._pieces = self._run(lm, ids or EMPTY_PROMPT, max_tokens, temperature, stop, rng)

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def _run(self, lm: ByteLM, ids: bytes, max_tokens: int, temperature: float, stop: list[str],
             rng: np.random.Generator) -> Iterator[str]:
        # Invalid UTF-8 (possible at a high temperature) becomes U+FFFD instead of an exception.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        logits, state = lm.step(np.frombuffer(ids, dtype=np.uint8).astype(np.int64)[None, :], lm.zero_state())
        feed = np.zeros((1, 1), dtype=np.int64)  # reused: one byte per step
        pending = ""  # decoded but not yet yielded: it may be the start of a stop string
        for produced in range(1, max_tokens + 1):
            byte = sample(logits, temperature, rng)
            self.completion_tokens = produced
            last = produced == max_tokens
            text = decoder.decode(bytes((byte,)), final=last)
            if text:
                pending += text
                cut = _stop_at(pending, stop)
                if cut is not None:
                    self.finish_reason = "stop"
                    if cut:
                        yield pending[:cut]
                    return
                # Hold back the longest tail that could still grow into a stop string.
                ready = len(pending) - (0 if last else _partial_stop(pending, stop))
                if ready:
                    piece, pending = pending[:ready], pending[ready:]
                    yield piece
            if not last:
                feed[0, 0] = byte
                logits, state = lm.step(feed, state)
        self.finish_reason = "length"


def sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """One byte from the logits: argmax at temperature 0, else a softmax draw. Never NaN: the
    softmax subtracts the maximum first, and non-finite scores fall back to the argmax."""
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    weights = np.exp(scaled - scaled.max())
    cumulative = np.cumsum(weights)
    total = cumulative[-1]
    if not np.isfinite(total) or total <= 0:
        return int(np.argmax(np.nan_to_num(logits, nan=-np.inf)))
    return min(int(np.searchsorted(cumulative, rng.random() * total, side="right")), VOCAB - 1)


def _stop_at(text: str, stop: list[str]) -> int | None:
    """Where the earliest stop string in `text` begins, or None."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(found) if found else None


def _partial_stop(text: str, stop: list[str]) -> int:
    """The length of the longest tail of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:size]):
                best = size
                break
    return best
