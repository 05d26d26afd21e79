"""How an input becomes requests: the platform's two `mapping_type`s.

file: one request per input file, the file in the api's single `{"type": "file"}` field (the
      platform refuses an api without exactly one file parameter, and so does this).
csv:  one request per CSV row. The `mapping_rule` is the api's request schema with an `"index"`
      (0-based CSV column) on each string/number/integer/boolean leaf; the row's values, converted
      to the leaf's type, fill a JSON body of the schema's shape. Index -1 (any negative index) or a
      column the row lacks leaves the field out, as on the platform. ModelArts' documented example:
      a row `5.1,3.5,1.4,0.2` with input_1..input_4 at indexes 0..3 under
      `data.req_data.items[0]` gives `{"data": {"req_data": [{"input_1": 5.1, ...}]}}`.

A rule is checked once against the api's schema before anything is sent; a row whose values do
not convert fails alone (RowError, with its row number).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any, Union

from maserve.batch.inputs import InputError, UsageError
from maserve.config import JSON, MULTIPART, ApiSpec
from maserve.multipart import encode_multipart

LEAF_TYPES = ("string", "number", "integer", "boolean")
TRUE_WORDS = {"true", "1", "yes", "y", "t"}
FALSE_WORDS = {"false", "0", "no", "n", "f"}


class RowError(ValueError):
    """One CSV row cannot become a request; its own line fails, the others go on."""


def route(api: ApiSpec) -> str:
    return f"{api.method} {api.url}"


# -- file mapping ---------------------------------------------------------------------------------
def file_field(api: ApiSpec) -> str:
    """The api's one file field; UsageError when the platform could not map a file onto the api."""
    if api.request_content_type != MULTIPART:
        raise UsageError(f"{route(api)} takes {api.request_content_type}: file mapping sends each file as "
                         "multipart/form-data (use --mapping-type csv for JSON apis)")
    fields = sorted(api.file_fields)
    if len(fields) != 1:
        listed = f" ({', '.join(fields)})" if fields else ""
        raise UsageError(f"{route(api)} declares {len(fields)} file fields{listed}: file mapping needs exactly one "
                         'parameter of {"type": "file"} (the platform refuses the job too)')
    others = [name for name in api.required_fields if name != fields[0]]
    if others:
        raise UsageError(f"{route(api)} also requires {', '.join(others)}: file mapping sends only the file "
                         "(the platform allows exactly one parameter)")
    return fields[0]


class FileRequests:
    """The multipart request of each input file: one boundary per job, drawn at random once."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.boundary = uuid.uuid4().hex

    def build(self, name: str, data: bytes) -> tuple[bytes, dict[str, str]]:
        body, ctype = encode_multipart([(self.field, name.rsplit("/", 1)[-1], data)], {}, self.boundary)
        return body, {"Content-Type": ctype}


# -- csv mapping ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leaf:
    index: int
    type: str
    path: str


@dataclass(frozen=True)
class ObjectNode:
    fields: tuple[tuple[str, "Node"], ...]


@dataclass(frozen=True)
class ArrayNode:
    items: tuple["Node", ...]


Node = Union[Leaf, ObjectNode, ArrayNode]
_MISSING = object()


@dataclass(frozen=True)
class Rule:
    """A checked mapping rule: `body(row, number)` is the request body of one CSV row."""

    root: Node
    unmapped: tuple[str, ...]  # leaves without an index: always left out

    def body(self, row: list[str], number: int) -> Any:
        value = _build(self.root, row, number)
        return {} if value is _MISSING else value


def compile_rule(rule: Any, api: ApiSpec) -> Rule:
    """Check `rule` against the api's request schema; UsageError naming the JSON path otherwise."""
    if not isinstance(rule, dict):
        raise UsageError("mapping rule: want a JSON object (the api's request schema with an index on each leaf)")
    unmapped: list[str] = []
    root = _compile(rule, api.request_schema, "$", unmapped)
    if not any(leaf.index >= 0 for leaf in _leaves(root)):
        raise UsageError("mapping rule maps no CSV column: give each string/number/integer/boolean field an "
                         '"index" (0-based column); `maserve batch mapping-rule MODEL_DIR` prints a template')
    return Rule(root, tuple(unmapped))


def template(api: ApiSpec) -> tuple[dict[str, Any], int]:
    """The api's request schema with indexes 0, 1, ... on its leaves, in order, and how many. An
    array of `minItems` N > 1 (iris' four features) becomes N items, one column each."""
    schema = copy.deepcopy(api.request_schema) or {"type": "object", "properties": {}}
    counter = [0]

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        kind = _node_type(node)
        if kind == "object":
            for sub in (node.get("properties") or {}).values():
                walk(sub)
        elif kind == "array":
            items = node.get("items")
            wanted = node.get("minItems")
            if isinstance(items, dict) and isinstance(wanted, int) and 1 < wanted <= 1000:
                node["items"] = items = [copy.deepcopy(items) for _ in range(wanted)]  # a column each
            for sub in items if isinstance(items, list) else [items]:
                walk(sub)
        elif kind in LEAF_TYPES:
            node["index"] = counter[0]
            counter[0] += 1

    walk(schema)
    return schema, counter[0]


def _node_type(node: dict[str, Any]) -> str:
    declared = node.get("type")
    if isinstance(declared, list):
        declared = next((t for t in declared if t != "null"), None)
    if isinstance(declared, str):
        return declared
    if "properties" in node:
        return "object"
    if "items" in node:
        return "array"
    return "string"


def _compile(rule: Any, schema: Any, path: str, unmapped: list[str]) -> Node:
    if not isinstance(rule, dict):
        raise UsageError(f"mapping rule at {path}: want a schema object, got {json.dumps(rule)[:60]}")
    schema = schema if isinstance(schema, dict) else {}
    kind = _node_type(rule)
    declared = _node_type(schema) if schema.get("type") or "properties" in schema or "items" in schema else None
    if declared is not None and kind != declared and not (kind == "integer" and declared == "number"):
        raise UsageError(f"mapping rule at {path}: {kind} here, but the api's request schema declares {declared}")
    if kind in ("object", "array") and "index" in rule:
        raise UsageError(f"mapping rule at {path}: an index on an {kind}: only string, number, integer and "
                         "boolean fields take a CSV column")
    if kind == "object":
        props = rule.get("properties") or {}
        if not isinstance(props, dict):
            raise UsageError(f"mapping rule at {path}: properties must be an object")
        declared_props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        closed = bool(declared_props) or schema.get("additionalProperties") is False
        fields = []
        for name, sub in props.items():
            if closed and name not in declared_props:
                known = ", ".join(sorted(declared_props)) or "none"
                raise UsageError(f"mapping rule at {path}.{name}: the api's request schema has no field '{name}' "
                                 f"here (it declares: {known})")
            fields.append((name, _compile(sub, declared_props.get(name), f"{path}.{name}", unmapped)))
        return ObjectNode(tuple(fields))
    if kind == "array":
        items = rule.get("items")
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise UsageError(f"mapping rule at {path}: an array needs items (a schema, or a list of them)")
        declared_items = schema.get("items")
        nodes = []
        for i, item in enumerate(items):
            sub = declared_items[i] if isinstance(declared_items, list) and i < len(declared_items) else (
                declared_items if isinstance(declared_items, dict) else {})
            nodes.append(_compile(item, sub, f"{path}[{i}]", unmapped))
        return ArrayNode(tuple(nodes))
    if kind not in LEAF_TYPES:
        raise UsageError(f"mapping rule at {path}: type {kind} cannot take a CSV column")
    index = rule.get("index")
    if index is None:
        unmapped.append(path)
        return Leaf(-1, kind, path)
    if isinstance(index, bool) or not isinstance(index, int):
        raise UsageError(f"mapping rule at {path}: index {json.dumps(index)} is not an integer "
                         "(a 0-based CSV column, or -1 to leave the field out)")
    return Leaf(index, kind, path)


def _leaves(node: Node) -> list[Leaf]:
    if isinstance(node, Leaf):
        return [node]
    children = [child for _, child in node.fields] if isinstance(node, ObjectNode) else list(node.items)
    return [leaf for child in children for leaf in _leaves(child)]


def _build(node: Node, row: list[str], number: int) -> Any:
    if isinstance(node, Leaf):
        if node.index < 0 or node.index >= len(row):
            return _MISSING
        return _convert(row[node.index], node, number)
    if isinstance(node, ObjectNode):
        out = {}
        for name, child in node.fields:
            value = _build(child, row, number)
            if value is not _MISSING:
                out[name] = value
        return out
    return [value for value in (_build(child, row, number) for child in node.items) if value is not _MISSING]


def _convert(text: str, leaf: Leaf, number: int) -> Any:
    """The cell as the leaf's declared type; RowError naming the row, the column and the field."""
    if leaf.type == "string":
        return text
    value = text.strip()
    try:
        if leaf.type == "boolean":
            if value.lower() in TRUE_WORDS:
                return True
            if value.lower() in FALSE_WORDS:
                return False
            raise ValueError
        if leaf.type == "integer":
            try:
                return int(value)
            except ValueError:
                as_float = float(value)
                if not as_float.is_integer():
                    raise
                return int(as_float)
        try:
            return int(value)
        except ValueError:
            as_float = float(value)
            if not math.isfinite(as_float):
                raise ValueError from None  # NaN and Infinity are not JSON
            return as_float
    except (ValueError, OverflowError):
        a = "an" if leaf.type[0] in "aeiou" else "a"
        raise RowError(f"row {number}, column {leaf.index} ({leaf.path}): {text!r} is not {a} {leaf.type}") from None


def parse_csv(data: bytes, where: str, header: bool) -> list[tuple[int, list[str]]]:
    """(row number, cells) of each data row: UTF-8 (a BOM is dropped), comma separated; blank rows
    are skipped; numbers count every non-blank record from 1, a header included."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: not UTF-8 (byte {exc.start}): CSV inputs must be UTF-8") from None
    try:
        records = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=",", strict=True) if r]
    except csv.Error as exc:
        raise InputError(f"{where}: not valid CSV: {exc}") from None
    numbered = list(enumerate(records, 1))
    return numbered[1:] if header else numbered


def json_request(api: ApiSpec, body: Any) -> tuple[bytes, dict[str, str]]:
    """A row's body in the api's request content type: JSON as is, or each top-level field as a
    multipart form field (objects and arrays JSON-encoded, as maserve's decoder reads them)."""
    if api.request_content_type == MULTIPART:
        form = {name: value if isinstance(value, str) else json.dumps(value) for name, value in body.items()}
        encoded, ctype = encode_multipart([], form)
        return encoded, {"Content-Type": ctype}
    return json.dumps(body, ensure_ascii=False).encode(), {"Content-Type": JSON}


def check_csv_api(api: ApiSpec) -> None:
    if api.request_content_type not in (JSON, MULTIPART):
        raise UsageError(f"{route(api)} takes {api.request_content_type}: csv mapping sends JSON bodies "
                         "(application/json, or multipart/form-data fields)")
