"""The request and response schemas of config.json, compiled once per api at app construction.

config.json declares bodies in JSON schema plus one ModelArts extension, `{"type": "file"}` for
upload fields. jsonschema does not know that type, and files never reach the validator anyway (they
travel in `Inputs.files`), so file fields are cut out of the schema before it is compiled. Multipart
text fields arrive as strings; they are converted to their declared type first, so that a form
field declared `integer` reaches the model as an int and `"abc"` fails with a type error.

Error messages (the `error_msg` of the reply):
  400 MASERVE.INVALID_FIELD  field '<name>': <value as JSON> is not valid: <rule> (at <path>)
  400 MASERVE.INVALID_FIELD  request body is not valid: <rule> (at $)
  400 MASERVE.MISSING_FIELD  missing required field '<name>'
  500 MASERVE.INVALID_RESPONSE  the model's answer to <METHOD> <url> does not match the response schema: <rule> (at <path>)
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterable

import jsonschema
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

from maserve.config import JSON, MULTIPART, ApiSpec, ConfigError
from maserve.errors import InvalidInput, InvalidResponse, ServiceError  # noqa: F401  (InvalidResponse: re-exported)

FILE_TYPE = "file"
# Longest rendering of an offending value or rule in an error message; the rest becomes "...".
_MAX_SHOWN = 120

Converter = Callable[[str], Any]
Check = Callable[[Any], bool]


def _is_file(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    declared = schema.get("type")
    return declared == FILE_TYPE or (isinstance(declared, list) and FILE_TYPE in declared)


def without_files(schema: Any) -> Any:
    """A copy of `schema` in plain JSON schema: file properties (and their `required` entries) removed,
    any other `{"type": "file"}` subschema made permissive."""
    if isinstance(schema, list):
        return [without_files(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if _is_file(schema):
        return {}
    out: dict[str, Any] = {}
    dropped: set[str] = set()
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            dropped = {name for name, sub in value.items() if _is_file(sub)}
            out[key] = {name: without_files(sub) for name, sub in value.items() if name not in dropped}
        elif key in ("enum", "const", "default", "examples"):
            out[key] = value  # values, not schemas
        else:
            out[key] = without_files(value)
    if dropped and isinstance(out.get("required"), list):
        out["required"] = [name for name in out["required"] if name not in dropped]
    return out


def compile_schema(schema: dict[str, Any], where: str) -> jsonschema.protocols.Validator | None:
    """A validator for `schema` (Draft 7 unless it names its `$schema`), or None when it constrains
    nothing, so that such apis pay nothing per request. An invalid schema is a ConfigError."""
    if not _constrains(schema):
        return None
    cls = validator_for(schema, default=jsonschema.Draft7Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"{where}: not a valid JSON schema: {exc.message} (at {_path(exc.absolute_path)})") from None
    return cls(schema)


def _constrains(schema: dict[str, Any]) -> bool:
    """False for what ModelArts writes when everything is a file: {"type": "object", "properties": {}, ...}."""
    for key, value in schema.items():
        if key == "type" and value == "object":
            continue
        if key in ("properties", "required") and not value:
            continue
        if key in ("title", "description", "$schema", "examples", "$comment"):
            continue
        return True
    return False


class RequestSchema:
    """One api's request schema, compiled: converters for multipart text fields and a validator."""

    __slots__ = ("api", "validator", "quick", "converters")

    def __init__(self, api: ApiSpec) -> None:
        self.api = api
        plain = without_files(api.request_schema)
        self.validator = compile_schema(plain, f"request schema of {api.method} {api.url}")
        self.quick = quick_check(plain) if self.validator is not None else None
        self.converters: dict[str, Converter] = {}
        if api.request_content_type == MULTIPART:
            for name, sub in (plain.get("properties") or {}).items():
                converter = _converter(sub.get("type") if isinstance(sub, dict) else None)
                if converter is not None:
                    self.converters[name] = converter

    def convert_form(self, fields: dict[str, Any]) -> None:
        """Turn multipart text fields into their declared types, in place; text that does not parse
        stays text, so the validator names the field and the type it should have had."""
        for name, converter in self.converters.items():
            text = fields.get(name)
            if text is not None:
                fields[name] = converter(text)

    def validate(self, fields: dict[str, Any]) -> None:
        """Raise InvalidInput (400) naming the first field that breaks the schema, and the rule."""
        if self.validator is None or (self.quick is not None and self.quick(fields)):
            return
        error = best_match(self.validator.iter_errors(fields))
        if error is None:
            return
        path = list(error.absolute_path)
        if not path:
            if error.validator == "required" and isinstance(error.instance, dict):
                missing = next((n for n in error.validator_value if n not in error.instance), None)
                if missing is not None:
                    raise InvalidInput(f"missing required field '{missing}'", error_code="MASERVE.MISSING_FIELD")
            raise InvalidInput(
                f"request body is not valid: {_shorten(error.message)} (at $)", error_code="MASERVE.INVALID_FIELD"
            )
        name = str(path[0])
        raise InvalidInput(
            f"field '{name}': {_shown(fields.get(name))} is not valid: {_shorten(error.message)} (at {_path(path)})",
            error_code="MASERVE.INVALID_FIELD",
        )


class ResponseSchema:
    """One api's response schema, compiled; checked only when MASERVE_VALIDATE_RESPONSES=1."""

    __slots__ = ("api", "validator", "quick")

    def __init__(self, api: ApiSpec) -> None:
        self.api = api
        self.validator = None
        self.quick: Check | None = None
        if api.response_content_type == JSON:
            plain = without_files(api.response_schema)
            self.validator = compile_schema(plain, f"response schema of {api.method} {api.url}")
            self.quick = quick_check(plain) if self.validator is not None else None

    def check(self, answer: Any) -> None:
        """Raise InvalidResponse (500) when the model's answer (as it will be sent) breaks the schema."""
        if self.validator is None or (self.quick is not None and self.quick(answer)):
            return
        error = best_match(self.validator.iter_errors(answer))
        if error is not None:
            raise InvalidResponse(
                f"the model's answer to {self.api.method} {self.api.url} does not match the response schema: "
                f"{_shorten(error.message)} (at {_path(error.absolute_path)})"
            )


# -- quick checks ---------------------------------------------------------------------------------
# jsonschema costs about 20 µs per subschema visited (90 µs for the iris request), more than a small
# model's inference. Schemas made only of the common keywords below are also compiled into plain
# Python predicates; a request they accept skips jsonschema, one they refuse goes through jsonschema,
# which has the last word and writes the message. So a predicate may refuse too much, never accept
# too much: any keyword it does not know disables it for the whole schema.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "format", "$id"})
_DRAFT7 = ("http://json-schema.org/draft-07/schema#", "http://json-schema.org/draft-07/schema")
_TYPES: dict[str, Check] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    "integer": lambda x: (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, float) and x.is_integer()),
}


class _Unsupported(Exception):
    pass


def quick_check(schema: Any) -> Check | None:
    """A predicate that is True only for instances `schema` accepts (Draft 7), or None."""
    if isinstance(schema, dict) and schema.get("$schema", _DRAFT7[0]) not in _DRAFT7:
        return None
    try:
        return _quick(schema)
    except _Unsupported:
        return None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _quick(schema: Any) -> Check:
    if schema is True or schema == {}:
        return lambda x: True
    if not isinstance(schema, dict):
        raise _Unsupported()
    checks: list[Check] = []
    for key, value in schema.items():
        if key in _ANNOTATIONS or key == "$schema":
            continue
        if key == "type":
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not names or any(n not in _TYPES for n in names):
                raise _Unsupported()
            tests = [_TYPES[n] for n in names]
            checks.append(tests[0] if len(tests) == 1 else lambda x, tests=tests: any(t(x) for t in tests))
        elif key == "properties" and isinstance(value, dict):
            subs = {name: _quick(sub) for name, sub in value.items()}
            checks.append(lambda x, subs=subs: not isinstance(x, dict) or all(c(x[n]) for n, c in subs.items() if n in x))
        elif key == "required" and isinstance(value, list):
            checks.append(lambda x, names=tuple(value): not isinstance(x, dict) or all(n in x for n in names))
        elif key == "additionalProperties" and value is False and "patternProperties" not in schema:
            known = frozenset(schema.get("properties") or ())
            checks.append(lambda x, known=known: not isinstance(x, dict) or known.issuperset(x))
        elif key == "items" and isinstance(value, dict):
            item = _quick(value)
            checks.append(lambda x, item=item: not isinstance(x, list) or all(item(i) for i in x))
        elif key in ("minItems", "maxItems", "minLength", "maxLength") and isinstance(value, int):
            kind = list if key.endswith("Items") else str
            if key.startswith("min"):
                checks.append(lambda x, n=value, kind=kind: not isinstance(x, kind) or len(x) >= n)
            else:
                checks.append(lambda x, n=value, kind=kind: not isinstance(x, kind) or len(x) <= n)
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") and _is_number(value):
            compare = {
                "minimum": lambda x, v=value: x >= v,
                "maximum": lambda x, v=value: x <= v,
                "exclusiveMinimum": lambda x, v=value: x > v,
                "exclusiveMaximum": lambda x, v=value: x < v,
            }[key]
            checks.append(lambda x, compare=compare: not _is_number(x) or compare(x))
        elif key == "enum" and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            checks.append(lambda x, allowed=frozenset(value): isinstance(x, str) and x in allowed)
        else:
            raise _Unsupported()
    if len(checks) == 1:
        return checks[0]
    return lambda x: all(check(x) for check in checks)


def _converter(declared: Any) -> Converter | None:
    """The text → value conversion for a declared type (or list of types); None to keep text as is."""
    types = [declared] if isinstance(declared, str) else list(declared) if isinstance(declared, list) else []
    if not types or types[0] == "string":
        return None

    def convert(text: str) -> Any:
        for kind in types:
            if kind == "string":
                return text
            value = _parse(text, kind)
            if value is not _NO_VALUE:
                return value
        return text

    return convert


_NO_VALUE = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse(text: str, kind: str) -> Any:
    """`text` as a value of JSON schema type `kind`, or _NO_VALUE."""
    stripped = text.strip()
    if kind == "boolean":
        lowered = stripped.lower()
        return True if lowered == "true" else False if lowered == "false" else _NO_VALUE
    try:
        value = json.loads(stripped, parse_constant=_reject_constant)
    except ValueError:
        return _NO_VALUE
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_VALUE
    if kind == "number":  # 1e999 reads as Infinity: not a JSON number
        finite = not isinstance(value, float) or math.isfinite(value)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) and finite else _NO_VALUE
    if kind == "array":
        return value if isinstance(value, list) else _NO_VALUE
    if kind == "object":
        return value if isinstance(value, dict) else _NO_VALUE
    if kind == "null":
        return None if value is None else _NO_VALUE
    return _NO_VALUE


def _shorten(text: str) -> str:
    """A long rule loses its middle (the offending value), keeping the rule's wording at its end."""
    if len(text) <= _MAX_SHOWN:
        return text
    half = (_MAX_SHOWN - 3) // 2
    return text[:half] + "..." + text[-half:]


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _path(parts: Iterable[Any]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
