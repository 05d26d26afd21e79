"""The model's answers as strict JSON, in every path (plain, batched, streamed, WebSocket).

Python's json writes NaN and Infinity by default: not JSON (RFC 8259), refused by strict parsers
and by every response schema. Here they are a `500 MASERVE.INVALID_RESPONSE` naming the field
(`$.probabilities.setosa`), so the client gets a valid error instead of an invalid answer and the
access log (ERROR, with the request id) says which field to fix.
"""

from __future__ import annotations

import json
import math
from typing import Any

from maserve.errors import InvalidResponse, ModelError

# Non-ASCII text as UTF-8 characters, as the platform's runtimes write it (labels in Chinese are
# common), not \uXXXX escapes; the encoder built once (json.dumps sets one up on every call).
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
_MAX_DEPTH = 64  # how deep the search for the offending field goes (json's own limit is recursion)


def to_json(value: Any, what: str = "answer") -> str:
    """`value` as strict JSON text; InvalidResponse for NaN/Infinity, ModelError for the rest."""
    try:
        return _encode(value)
    except ValueError as exc:  # NaN/Infinity, a lone surrogate (UnicodeEncodeError), a cycle
        where = non_finite_path(value)
        if where is not None:
            number, path = where
            raise InvalidResponse(f"the model's {what} has {number} at {path}: NaN and Infinity are not JSON; "
                                  "replace them (e.g. with null) in the model's code") from None
        raise ModelError(f"the model's {what} is not JSON-serialisable: {exc}") from None
    except (TypeError, RecursionError) as exc:
        raise ModelError(f"the model's {what} is not JSON-serialisable: {exc}") from None


def non_finite_path(value: Any, path: str = "$", depth: int = 0) -> tuple[str, str] | None:
    """The first NaN or Infinity in `value` as ("NaN", "$.a[2]"), or None."""
    if isinstance(value, float):
        return (repr(value).replace("inf", "Infinity").replace("nan", "NaN"), path) if not math.isfinite(value) else None
    if depth >= _MAX_DEPTH:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite_path(item, f"{path}.{key}" if isinstance(key, str) and key.isidentifier()
                                    else f"{path}[{json.dumps(str(key), ensure_ascii=False)}]", depth + 1)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = non_finite_path(item, f"{path}[{index}]", depth + 1)
            if found is not None:
                return found
    return None
