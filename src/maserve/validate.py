"""ModelArts' rules for config.json, as findings with JSON paths (`maserve config validate`, serve).

Hand-written checks rather than one JSON Schema: every problem gets a message that says what to
write instead, and the typos ModelArts' own samples carry (which the platform accepts) become
warnings with the fix instead of errors.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import jsonschema

ERROR = "ERROR"
WARNING = "WARNING"

MULTIPART = "multipart/form-data"
JSON = "application/json"
# The request type of the api served when config.json declares none: multipart or JSON, as it comes.
ANY = "*/*"
CONTENT_TYPES = (JSON, MULTIPART)
# A response type: Server-Sent Events, for a model that streams (maserve.sse).
EVENT_STREAM = "text/event-stream"
# ModelArts' marker of an upload field inside a request schema: {"type": "file"}.
FILE_TYPE = "file"
# The platform's own samples carry these typos and it accepts them; so do we, with a warning.
KEY_TYPOS = {"procotol": "protocol"}
CONTENT_TYPE_TYPOS = {"applicaton/json": JSON}

MODEL_TYPES = (
    "Image",
    "TensorFlow",
    "PyTorch",
    "MindSpore",
    "MXNet",
    "Caffe",
    "Spark_MLlib",
    "Scikit_Learn",
    "XGBoost",
    "Template",
)
PROTOCOLS = ("http", "https")
# An api may also be served over WebSocket (maserve.websocket): plain or over TLS.
WS_PROTOCOLS = ("ws", "wss")
METHODS = ("get", "post", "put", "delete", "patch")
ALGORITHM_FORBIDDEN = "&!'\"<>="
ALGORITHM_MAX = 36
RATIO_METRICS = ("f1", "recall", "precision", "accuracy")
# health key → smallest sensible value
HEALTH_INTEGERS = {"initial_delay_seconds": 0, "timeout_seconds": 1, "period_seconds": 1, "failure_threshold": 1}
CHECK_METHODS = ("HTTP", "EXEC")
RESTRAINTS = ("EXACT", "ATLEAST", "ATMOST")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INTEGER_STRING = re.compile(r"^\s*[+-]?\d+\s*$")
# JSON Schema keywords whose value is a schema, a list of schemas, or a name → schema map.
_SCHEMA_KEYS = ("additionalItems", "additionalProperties", "contains", "propertyNames", "if", "then", "else", "not")
_SCHEMA_LIST_KEYS = ("allOf", "anyOf", "oneOf")
_SCHEMA_MAP_KEYS = ("properties", "patternProperties", "definitions", "dependencies")


@dataclass(frozen=True)
class Finding:
    """One problem in config.json: ERROR (refused) or WARNING (accepted, but worth fixing)."""

    level: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.level} {self.path}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def child(path: str, key: str | int) -> str:
    """The JSON path of `key` under `path`: `$.a[0].b`, or `$.a['odd key']` for odd names."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.match(key) or key == "Content-type":
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def validate_config(raw: dict[str, Any]) -> list[Finding]:
    """Every problem in a parsed config.json, in document order."""
    out: list[Finding] = []
    _check_algorithm(raw, out)
    _check_model_type(raw, out)
    if "metrics" in raw:
        _check_metrics(raw["metrics"], out)
    if "apis" in raw:
        _check_apis(raw["apis"], out)
    if not raw.get("apis"):
        out.append(Finding(WARNING, "$.apis", "none declared: like ModelArts' built-in runtimes, maserve serves "
                           "POST / (multipart or JSON, as it comes) and hands it to the model; declare the api"))
    if "health" in raw:
        _check_health(raw["health"], out)
    if "dependencies" in raw:
        _check_dependencies(raw["dependencies"], out)
    return out


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == ERROR]


def warnings(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == WARNING]


# -- top level ----------------------------------------------------------------------------------
def _check_algorithm(raw: dict[str, Any], out: list[Finding]) -> None:
    path = "$.model_algorithm"
    if "model_algorithm" not in raw:
        out.append(Finding(ERROR, path, "required, e.g. \"image_classification\""))
        return
    value = raw["model_algorithm"]
    if not isinstance(value, str):
        out.append(Finding(ERROR, path, "must be a string"))
        return
    if not value[:1].isascii() or not value[:1].isalpha():
        out.append(Finding(ERROR, path, f"must start with a letter, got {value!r}"))
    if len(value) > ALGORITHM_MAX:
        out.append(Finding(ERROR, path, f"at most {ALGORITHM_MAX} characters, got {len(value)}"))
    bad = sorted({c for c in value if c in ALGORITHM_FORBIDDEN})
    if bad:
        out.append(Finding(ERROR, path, f"must not contain {' '.join(bad)} (none of {ALGORITHM_FORBIDDEN} is allowed)"))


def _check_model_type(raw: dict[str, Any], out: list[Finding]) -> None:
    path = "$.model_type"
    if "model_type" not in raw:
        out.append(Finding(ERROR, path, 'required; "Image" for a custom image'))
        return
    value = raw["model_type"]
    if value not in MODEL_TYPES:
        near = [t for t in MODEL_TYPES if isinstance(value, str) and t.lower() == value.lower()]
        hint = f'; write "{near[0]}"' if near else ""
        out.append(Finding(ERROR, path, f"must be one of {', '.join(MODEL_TYPES)}, got {value!r}{hint}"))
    elif value == "Image" and "runtime" in raw:
        out.append(Finding(ERROR, "$.runtime", "must not be set when model_type is Image (the image is the runtime)"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_metrics(metrics: Any, out: list[Finding]) -> None:
    if not isinstance(metrics, dict):
        out.append(Finding(ERROR, "$.metrics", "must be an object of metric name → number"))
        return
    for name, value in metrics.items():
        path = child("$.metrics", name)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                out.append(Finding(ERROR, path, f"must be a number, got {value!r}"))
                continue
            out.append(Finding(WARNING, path, f"a string; write the number {value:g}"))
        elif not _is_number(value):
            out.append(Finding(ERROR, path, f"must be a number, got {value!r}"))
            continue
        if name in RATIO_METRICS and not 0 <= value <= 1:
            out.append(Finding(ERROR, path, f"must be between 0 and 1, got {value:g}"))


# -- apis ---------------------------------------------------------------------------------------
def _check_apis(apis: Any, out: list[Finding]) -> None:
    if not isinstance(apis, list):
        out.append(Finding(ERROR, "$.apis", "must be an array of api objects"))
        return
    seen: dict[tuple[str, str], int] = {}
    for index, api in enumerate(apis):
        path = child("$.apis", index)
        if not isinstance(api, dict):
            out.append(Finding(ERROR, path, "must be an object"))
            continue
        _check_protocol(api, path, out, PROTOCOLS + WS_PROTOCOLS)
        url = api.get("url", "/")
        if not isinstance(url, str) or not url.startswith("/"):
            out.append(Finding(ERROR, child(path, "url"), f'must start with "/", got {url!r}'))
        method = api.get("method", "post")
        if not isinstance(method, str) or method.lower() not in METHODS:
            out.append(Finding(ERROR, child(path, "method"), f"must be one of {', '.join(METHODS)}, got {method!r}"))
        elif isinstance(url, str):
            websocket = api.get("protocol", api.get("procotol")) in WS_PROTOCOLS
            route = ("WebSocket" if websocket else method.upper(), url)
            if route in seen:
                out.append(Finding(ERROR, path, f"two apis entries declare {route[0]} {url} ($.apis[{seen[route]}])"))
            seen.setdefault(route, index)
        for part in ("request", "response"):
            if part in api:
                _check_body(api[part], child(path, part), part == "request", out)


def _check_protocol(obj: dict[str, Any], path: str, out: list[Finding], allowed: tuple[str, ...] = PROTOCOLS) -> None:
    """`protocol` (or ModelArts' accepted typo `procotol`) is http or https (or, for an api, ws or wss)."""
    for typo, key in KEY_TYPOS.items():
        if typo in obj:
            note = f"; the value of {key!r} wins" if key in obj else ""
            out.append(Finding(WARNING, child(path, typo), f'ModelArts accepts this typo; write "{key}"{note}'))
    key = "protocol" if "protocol" in obj else "procotol" if "procotol" in obj else None
    if key is not None and obj[key] not in allowed:
        out.append(Finding(ERROR, child(path, key), f"must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {obj[key]!r}"))


def _check_body(body: Any, path: str, is_request: bool, out: list[Finding]) -> None:
    if not isinstance(body, dict):
        out.append(Finding(ERROR, path, 'must be an object {"Content-type": ..., "data": <JSON Schema>}'))
        return
    for key in body:
        if key != "Content-type" and key.lower() == "content-type":
            out.append(Finding(WARNING, child(path, key), 'not read by ModelArts nor maserve; write "Content-type"'))
    content_type = body.get("Content-type", JSON)
    ctype_path = child(path, "Content-type")
    normalised = content_type.strip().lower() if isinstance(content_type, str) else "?"
    if normalised in CONTENT_TYPE_TYPOS:
        fix = CONTENT_TYPE_TYPOS[normalised]
        out.append(Finding(WARNING, ctype_path, f'ModelArts accepts this typo; write "{fix}"'))
        normalised = fix
    elif not isinstance(content_type, str) or (normalised not in CONTENT_TYPES and is_request):
        out.append(Finding(ERROR, ctype_path, f"must be {JSON} or {MULTIPART}, got {content_type!r}"))
        normalised = "?"  # unknown: a file field is neither allowed nor refused for it
    elif normalised not in CONTENT_TYPES and normalised != EVENT_STREAM:
        # The platform passes the container's answer through whatever this says (templates write
        # e.g. multipart/json); maserve answers the script's JSON as application/json.
        out.append(Finding(WARNING, ctype_path, f"{content_type!r} is passed through by ModelArts; maserve "
                           f"answers JSON as {JSON}: write {JSON}"))
    if "data" in body:
        if not is_request:
            file_rule: tuple[str, str] | None = (
                ERROR, f"a file field is only allowed in a {MULTIPART} request, not in a response")
        elif normalised not in (MULTIPART, "?"):
            file_rule = (WARNING, f"a file field in an {normalised} request is only a value (ModelArts accepts it "
                         "and the script decides what it means); uploads need "
                         f"{MULTIPART}")
        else:
            file_rule = None
        _check_schema(body["data"], child(path, "data"), file_rule, out)


def _check_schema(schema: Any, path: str, file_rule: tuple[str, str] | None, out: list[Finding]) -> None:
    """`data` is a Draft 7 JSON Schema, where `{"type": "file"}` marks an upload field.

    `file_rule` is (level, why) for a file field here, or None where one is allowed.
    """
    if not isinstance(schema, dict):
        out.append(Finding(ERROR, path, "must be a JSON Schema object"))
        return
    checkable = copy.deepcopy(schema)
    properties = checkable.get("properties")
    top_level = {id(v) for v in properties.values()} if isinstance(properties, dict) else set()
    for sub_path, sub in _subschemas(checkable, path):
        if "item" in sub:
            note = "" if "items" not in sub else "; the value of 'items' wins"
            out.append(Finding(WARNING, child(sub_path, "item"), f'ModelArts accepts this typo; write "items"{note}'))
        declared = sub.get("type")
        if declared == FILE_TYPE:
            sub["type"] = "string"  # "file" is no JSON Schema type: check the rest as if it were a string
        elif isinstance(declared, list) and FILE_TYPE in declared:
            sub["type"] = list(dict.fromkeys("string" if t == FILE_TYPE else t for t in declared))
        else:
            continue
        if file_rule is not None:
            out.append(Finding(file_rule[0], child(sub_path, "type"), file_rule[1]))
        elif id(sub) not in top_level:
            out.append(Finding(ERROR, child(sub_path, "type"), "a file field must be a top-level property of data"))
    validator = jsonschema.Draft7Validator(jsonschema.Draft7Validator.META_SCHEMA)
    for error in sorted(validator.iter_errors(checkable), key=lambda e: [str(p) for p in e.absolute_path]):
        where = path
        for part in error.absolute_path:
            where = child(where, part)
        out.append(Finding(ERROR, where, f"not a valid JSON Schema: {error.message}"))


def _subschemas(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """`schema` and every schema nested in it (through the keywords that hold schemas)."""
    yield path, schema
    nested: list[tuple[str, Any]] = [(child(path, k), schema[k]) for k in _SCHEMA_KEYS if k in schema]
    for key in ("items", "item"):
        value = schema.get(key)
        if isinstance(value, list):
            nested += [(child(child(path, key), i), v) for i, v in enumerate(value)]
        elif value is not None:
            nested.append((child(path, key), value))
    for key in _SCHEMA_LIST_KEYS:
        if isinstance(schema.get(key), list):
            nested += [(child(child(path, key), i), v) for i, v in enumerate(schema[key])]
    for key in _SCHEMA_MAP_KEYS:
        if isinstance(schema.get(key), dict):
            nested += [(child(child(path, key), name), v) for name, v in schema[key].items()]
    for sub_path, sub in nested:
        if isinstance(sub, dict):
            yield from _subschemas(sub, sub_path)


# -- health and dependencies --------------------------------------------------------------------
def _check_health(health: Any, out: list[Finding]) -> None:
    path = "$.health"
    if not isinstance(health, dict):
        out.append(Finding(ERROR, path, 'must be an object, e.g. {"url": "/health", "protocol": "http"}'))
        return
    if "url" not in health:
        out.append(Finding(ERROR, child(path, "url"), 'required, e.g. "/health"'))
    elif not isinstance(health["url"], str) or not health["url"].startswith("/"):
        out.append(Finding(ERROR, child(path, "url"), f'must start with "/", got {health["url"]!r}'))
    _check_protocol(health, path, out)
    for key, minimum in HEALTH_INTEGERS.items():
        if key not in health:
            continue
        value = health[key]
        if isinstance(value, str) and _INTEGER_STRING.match(value):
            value = int(value)  # ModelArts' own samples write "12"
        if not isinstance(value, int) or isinstance(value, bool):
            out.append(Finding(ERROR, child(path, key), f"must be an integer (or a string of digits), got {value!r}"))
        elif value < minimum:
            out.append(Finding(ERROR, child(path, key), f"must be at least {minimum}, got {value}"))
    check_method = health.get("check_method", "HTTP")
    if check_method not in CHECK_METHODS:
        out.append(Finding(ERROR, child(path, "check_method"), f"must be HTTP or EXEC, got {check_method!r}"))
    elif check_method == "EXEC":
        command = health.get("command")
        if not command or not isinstance(command, (str, list)):
            out.append(Finding(ERROR, child(path, "command"), "required when check_method is EXEC"))


def _check_dependencies(deps: Any, out: list[Finding]) -> None:
    path = "$.dependencies"
    if not isinstance(deps, list):
        out.append(Finding(ERROR, path, 'must be an array of {"installer": "pip", "packages": [...]}'))
        return
    if deps:
        out.append(Finding(WARNING, path, "ModelArts does not install them into a custom image: `maserve build` does"))
    for index, dep in enumerate(deps):
        dep_path = child(path, index)
        if not isinstance(dep, dict):
            out.append(Finding(ERROR, dep_path, 'must be an object {"installer": "pip", "packages": [...]}'))
            continue
        if dep.get("installer") != "pip":
            out.append(Finding(ERROR, child(dep_path, "installer"), f'must be "pip", got {dep.get("installer")!r}'))
        packages = dep.get("packages")
        if not isinstance(packages, list):
            out.append(Finding(ERROR, child(dep_path, "packages"), "required: an array of package objects"))
            continue
        for p_index, package in enumerate(packages):
            _check_package(package, child(child(dep_path, "packages"), p_index), out)


def _check_package(package: Any, path: str, out: list[Finding]) -> None:
    if not isinstance(package, dict):
        out.append(Finding(ERROR, path, 'must be an object {"package_name": ..., "restraint": ..., ...}'))
        return
    if not isinstance(package.get("package_name"), str) or not package["package_name"]:
        out.append(Finding(ERROR, child(path, "package_name"), "required: the package's name"))
    version = package.get("package_version")
    if version is not None and not isinstance(version, str):
        out.append(Finding(ERROR, child(path, "package_version"), "must be a string, e.g. \"1.2.3\""))
        return
    restraint = package.get("restraint")
    if not version:
        # The official template leaves both blank ("package_version": "", "restraint": ""): accepted.
        if version == "":
            out.append(Finding(WARNING, child(path, "package_version"),
                               "blank: the latest release is installed; pin a version for a repeatable image"))
        if restraint not in (None, "", *RESTRAINTS):
            out.append(Finding(ERROR, child(path, "restraint"), f"must be EXACT, ATLEAST or ATMOST, got {restraint!r}"))
    elif restraint in (None, ""):
        what = "required" if restraint is None else "blank"
        out.append(Finding(WARNING, child(path, "restraint"),
                           f"{what} with package_version: taken as EXACT; write EXACT, ATLEAST or ATMOST"))
    elif restraint not in RESTRAINTS:
        out.append(Finding(ERROR, child(path, "restraint"), f"must be EXACT, ATLEAST or ATMOST, got {restraint!r}"))
