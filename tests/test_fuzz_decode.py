"""Property-based fuzzing of the request decoding path (issue 14, "reliability").

Three groups, all bounded (max_examples and a deadline per test; the whole file well under a minute):

1. In process, for every api of every example's config.json (and the no-apis default): arbitrary
   bytes, arbitrary and mutated multipart bodies, arbitrary Content-Type headers, JSON bodies built
   from each api's request schema and mutated away from it. `check_content_type`, `decode` and
   `decode_message` may only raise maserve ServiceErrors with a 4xx status; a body the schema accepts
   must decode; a well-formed form must decode to exactly what was sent.
2. A differential fuzz of maserve's multipart splitter (`_split_multipart`, `_parse_multipart`)
   against python-multipart's streaming parser. Where both accept a body, the parts (names, file
   names, data) must be identical. Every way they are allowed to differ is listed in ONE_SIDED and
   `_comparable_disposition` below, with the RFC section that decides it; anything else fails.
3. End to end, against real servers (examples/iris for JSON, tests/models/multi's /upload for
   multipart): fuzzed bodies and headers over 127.0.0.1 get either an answer or a JSON error with
   exactly error_code and error_msg, never a 5xx, never a hang; the server stays healthy.

Findings and their resolution: docs-fuzz-findings.md (to be folded into RELIABILITY.md).
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import math
import os
import re
import string
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import (
    MultipartParser,
    MultipartState,
    parse_options_header,
)

from helpers import FIXTURE_MODELS, ROOT, Server, start_server
from maserve.config import ANY, DEFAULT_API, JSON, MULTIPART, ApiSpec, load_config
from maserve.decode import (
    _MAX_PARTS,
    _parse_multipart,
    _split_multipart,
    check_content_type,
    decode,
    decode_message,
)
from maserve.errors import MalformedRequest, ServiceError
from maserve.schema import RequestSchema, without_files

# python-multipart logs a warning for each body it refuses: thousands here, all expected.
logging.getLogger("python_multipart").setLevel(logging.ERROR)

MODEL_DIRS = {
    "mnist": ROOT / "examples" / "mnist",
    "iris": ROOT / "examples" / "iris",
    "tabular": ROOT / "examples" / "tabular",
    "chat": ROOT / "examples" / "chat",
    "multi": FIXTURE_MODELS / "multi",
}


class Api:
    """One api of a config.json, its request schema compiled."""

    def __init__(self, label: str, spec: ApiSpec, schema: RequestSchema) -> None:
        self.label, self.spec, self.schema = label, spec, schema

    def __repr__(self) -> str:  # the test id and Hypothesis' report
        return self.label


def _apis() -> list[Api]:
    apis = []
    for name, directory in MODEL_DIRS.items():
        for spec in load_config(directory / "config.json").apis:
            kind = "ws" if spec.websocket else spec.method
            apis.append(Api(f"{name}:{kind}:{spec.url}", spec, RequestSchema(spec)))
    apis.append(Api("default:POST:/", DEFAULT_API, RequestSchema(DEFAULT_API)))  # a config without apis
    return apis


APIS = _apis()
HTTP_APIS = [a for a in APIS if not a.spec.websocket]
WS_APIS = [a for a in APIS if a.spec.websocket]
MULTIPART_APIS = [a for a in HTTP_APIS if a.spec.request_content_type in (MULTIPART, ANY)]
JSON_APIS = [a for a in HTTP_APIS if a.spec.request_content_type in (JSON, ANY)]
UPLOAD = next(a for a in APIS if a.label == "multi:POST:/upload")
MNIST = next(a for a in APIS if a.label == "mnist:POST:/")
IRIS = next(a for a in APIS if a.label == "iris:POST:/")

# Every test: bounded examples and time, no example database (Hypothesis still writes its constants
# cache under .hypothesis/, which it gitignores itself).
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


# MASERVE_FUZZ_SCALE=N runs N times as many examples (a longer hunt, e.g. nightly); 1 in the suite.
_SCALE = max(1, int(os.environ.get("MASERVE_FUZZ_SCALE", "1")))


def bounded(examples: int, deadline_ms: int = 2000) -> Callable[[Any], Any]:
    return settings(max_examples=examples * _SCALE, deadline=deadline_ms, database=None, suppress_health_check=_HEALTH)


def only_client_errors(call: Callable[[], Any]) -> Any:
    """Run `call`: it may return, or raise a ServiceError with a 4xx status and a JSON body; any
    other exception (or a 5xx) fails the property."""
    try:
        result = call()
        event("accepted")
        return result
    except ServiceError as exc:
        assert 400 <= exc.status < 500, f"{type(exc).__name__} {exc.status}: {exc.message}"
        body = json.loads(exc.body())
        assert set(body) == {"error_code", "error_msg"} and all(isinstance(v, str) for v in body.values())
        event(f"refused: {exc.error_code}")
        return exc


# == strategies: Content-Type headers ===========================================================
# RFC 2046 §5.1.1: a boundary is 1 to 70 of these characters, not ending with a space.
BCHARS = string.digits + string.ascii_letters + "'()+_,-./:=? "
TOKEN_CHARS = string.digits + string.ascii_letters + "!#$%&'*+-.^_`|~"
_NEEDS_QUOTES = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")

boundaries = st.one_of(
    st.text(BCHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" ")).map(str.encode),
    st.uuids().map(lambda u: u.hex.encode()),
    st.text(string.ascii_letters + string.digits, min_size=16, max_size=16).map(
        lambda s: b"----WebKitFormBoundary" + s.encode()),
    st.sampled_from([b"-", b"--", b"a", b"boundary", b"a b", b"=?x?=", b"'()+_,-./:=?"]),
)


def quote(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@st.composite
def multipart_content_types(draw: st.DrawFn, boundary: bytes) -> bytes:
    """`multipart/form-data; boundary=...` as clients write it, and as they should not."""
    media = draw(st.sampled_from([b"multipart/form-data", b"Multipart/Form-Data", b"MULTIPART/FORM-DATA",
                                  b" multipart/form-data "]))
    key = draw(st.sampled_from([b"boundary", b"Boundary", b"BOUNDARY"]))
    must_quote = bool(_NEEDS_QUOTES.search(boundary))
    style = draw(st.sampled_from(["auto", "quoted", "escaped"]))
    if style == "escaped":  # every character a quoted-pair: RFC 9110 §5.6.4
        value = b'"' + b"".join(b"\\" + bytes([c]) for c in boundary) + b'"'
    elif style == "quoted" or must_quote:
        value = quote(boundary)
    else:
        value = boundary
    param = key + draw(st.sampled_from([b"=", b" = ", b"\t=\t"])) + value
    params = [param] + draw(st.lists(st.sampled_from([b"charset=utf-8", b'charset="UTF-8"', b"foo=bar",
                                                      b"boundary*=utf-8''ignored"]), max_size=2))
    params = draw(st.permutations(params))
    sep = draw(st.sampled_from([b"; ", b";", b" ; ", b";\t"]))
    return media + sep + sep.join(params)


@st.composite
def content_types(draw: st.DrawFn) -> bytes:
    """Any Content-Type a client could send: right, wrong, odd, or plain noise."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=80))
    if kind == 1:
        return draw(multipart_content_types(draw(boundaries)))
    if kind == 2:
        return draw(st.sampled_from([b"multipart/form-data", b"multipart/form-data; boundary=",
                                     b'multipart/form-data; boundary=""', b"multipart/form-data; boundary*=x",
                                     b"multipart/form-data boundary=x", b"multipart/mixed; boundary=x",
                                     b"multipart/form-data; boundary=\"unterminated"]))
    if kind == 3:
        media = draw(st.sampled_from([b"application/json", b"Application/JSON", b"application/json ",
                                      b"text/plain", b"application/x-www-form-urlencoded", b"", b";",
                                      b"application/json; charset=utf-8", b"application/json;charset=\"utf-8\""]))
        return media
    if kind == 4:
        return draw(st.text(max_size=40)).encode("utf-8", "surrogatepass")
    main = draw(st.text(TOKEN_CHARS + "/", max_size=30)).encode()
    return main + b";" + draw(st.binary(max_size=40))


# == strategies: multipart bodies ================================================================
# Field names: tokens, Unicode (UTF-8, as browsers send it: RFC 7578 §5.1), bytes that are not
# UTF-8, names that need quoting and escaping; few enough that duplicates are common.
names = st.one_of(
    st.sampled_from([b"images", b"file", b"repeat", b"verbose", b"ratio", b"meta", b"tags", b"label", b"x"]),
    st.text(min_size=0, max_size=12).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(min_size=1, max_size=8).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.sampled_from([b'a"b', b"a\\b", b"a;b", b"a b", b"\xff\xfe", b"\xe4\xb8\xad\xe6\x96\x87", b"C:\\dir\\f.png"]),
)
filenames = st.one_of(
    st.just(b""),
    st.text(min_size=1, max_size=12).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"digit.png", b"a b.png", b'q"uote.png', b"C:\\Users\\x\\digit.png", b"\\\\server\\share\\f",
                     b"../../etc/passwd", b"\xff.bin", b"\xe6\x96\x87.png"]),
)


def _casing(draw: st.DrawFn, text: bytes) -> bytes:
    style = draw(st.sampled_from(["as is", "lower", "upper", "mixed"]))
    if style == "lower":
        return text.lower()
    if style == "upper":
        return text.upper()
    if style == "mixed":
        return bytes(c ^ 0x20 if chr(c).isalpha() and i % 2 else c for i, c in enumerate(text))
    return text


@st.composite
def param(draw: st.DrawFn, key: bytes, value: bytes) -> bytes:
    key = _casing(draw, key) if draw(st.booleans()) else key
    if not _NEEDS_QUOTES.search(value) and value and draw(st.booleans()):
        return key + b"=" + value
    return key + b"=" + quote(value)


@st.composite
def dispositions(draw: st.DrawFn, name: bytes | None, filename: bytes | None) -> bytes:
    params = []
    if name is not None:
        params.append(draw(param(b"name", name)))
    if filename is not None:
        params.append(draw(param(b"filename", filename)))
    if draw(st.integers(0, 9)) == 0:  # RFC 5987 extended form: RFC 7578 §4.2 forbids it, maserve ignores it
        params.append(b"filename*=UTF-8''%E2%82%AC%20rates.png")
    if draw(st.integers(0, 9)) == 0:
        params.append(draw(st.sampled_from([b"size=12", b'creation-date="x"', b"name*=utf-8''other"])))
    params = draw(st.permutations(params))
    kind = draw(st.sampled_from([b"form-data", b"form-data", b"Form-Data", b"attachment"]))
    sep = draw(st.sampled_from([b"; ", b";", b" ;  "]))
    return b"".join([kind] + [sep + p for p in params])


@st.composite
def part_data(draw: st.DrawFn, boundary: bytes) -> bytes:
    """Data, including near misses of the delimiter (which a valid body never has as a line prefix)."""
    near = [b"\r\n", b"--", b"\r\n-", b"\n--" + boundary, b"\r--" + boundary, b"--" + boundary,
            b"\r\n-" + boundary, b"\r\n--" + boundary[:-1], b"\r\n\r\n", b"\r"]
    pieces = draw(st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(near),
                                     st.text(max_size=10).map(lambda s: s.encode("utf-8", "surrogatepass"))),
                           max_size=4))
    return b"".join(pieces)


@st.composite
def part_headers(draw: st.DrawFn, disposition: bytes | None, content_type: bytes | None) -> list[bytes]:
    headers = []
    for name, value in ((b"Content-Disposition", disposition), (b"Content-Type", content_type)):
        if value is not None:
            colon = draw(st.sampled_from([b": ", b": ", b": ", b":", b":  ", b":\t", b" : "]))
            headers.append(_casing(draw, name) + colon + value)
    extra = st.tuples(st.text(TOKEN_CHARS, min_size=1, max_size=10).map(str.encode),
                      st.text(string.printable.strip() + " ", max_size=20).map(str.encode))
    for name, value in draw(st.lists(extra, max_size=2)):
        headers.append(name + b": " + value)
    if draw(st.integers(0, 19)) == 0 and disposition is not None:  # the same header twice: the last one counts
        headers.append(b"Content-Disposition: " + disposition)
    return draw(st.permutations(headers))


def without_delimiter(data: bytes, boundary: bytes) -> bytes:
    """RFC 2046 §5.1.1: a delimiter never starts a line inside a part."""
    while b"\r\n--" + boundary in data:
        data = data.replace(b"\r\n--" + boundary, b"")
    return data


@dataclass(frozen=True)
class Part:
    name: bytes | None
    filename: bytes | None
    data: bytes


@st.composite
def parts(draw: st.DrawFn, boundary: bytes, valid: bool) -> tuple[Part, bytes]:
    """One part and its bytes (without the delimiter lines around it)."""
    name = draw(names) if valid or draw(st.integers(0, 9)) else None
    filename = draw(filenames) if draw(st.booleans()) else None
    data = draw(part_data(boundary))
    if valid:
        data = without_delimiter(data, boundary)
    ctype = draw(st.sampled_from([None, b"application/octet-stream", b"image/png", b"text/plain; charset=utf-8"]))
    headers = draw(part_headers(draw(dispositions(name, filename)) if name is not None or not valid else None,
                                ctype))
    return Part(name, filename, data), b"\r\n".join(headers) + b"\r\n\r\n" + data


@st.composite
def multipart_bodies(draw: st.DrawFn, valid: bool | None = None) -> tuple[bytes, bytes, list[Part]]:
    """(boundary, body, the parts written). `valid`: None for either, True for RFC 2046 bodies only
    (before mutation), False for mutated ones."""
    mutate = draw(st.booleans()) if valid is None else not valid
    boundary = draw(boundaries)
    written = draw(st.lists(parts(boundary, valid=not mutate), max_size=6))
    delimiter = b"--" + boundary
    preamble = draw(st.sampled_from([b""] * 6 + [b"preamble\r\n", b"\r\n", b"ignored -- text\r\n\r\n"]))
    epilogue = draw(st.sampled_from([b"", b"\r\n", b"\r\nepilogue", b"\r\n\r\n--" + boundary + b"--\r\n"]))
    body = preamble + delimiter
    for _, raw in written:
        body += b"\r\n" + raw + b"\r\n" + delimiter
    body += b"--" + epilogue
    if mutate:
        body = draw(mutated_bytes(body, boundary))
    return boundary, body, [p for p, _ in written]


@st.composite
def mutated_bytes(draw: st.DrawFn, body: bytes, boundary: bytes) -> bytes:
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.integers(0, 9))
        at = draw(st.integers(0, len(body)))
        if how == 0:  # a CRLF becomes LF, or CR
            crlfs = [m.start() for m in re.finditer(b"\r\n", body)]
            if crlfs:
                i = draw(st.sampled_from(crlfs))
                body = body[:i] + draw(st.sampled_from([b"\n", b"\r", b""])) + body[i + 2:]
        elif how == 1:
            end = draw(st.integers(at, min(len(body), at + 20)))
            body = body[:at] + body[end:]
        elif how == 2:
            body = body[:at] + draw(st.binary(min_size=1, max_size=10)) + body[at:]
        elif how == 3:
            body = body[:at]
        elif how == 4:  # transport padding after a delimiter (RFC 2046 §5.1.1)
            d = [m.end() for m in re.finditer(re.escape(b"--" + boundary), body)]
            if d:
                i = draw(st.sampled_from(d))
                body = body[:i] + draw(st.sampled_from([b" ", b"\t", b" \t "])) + body[i:]
        elif how == 5:  # a delimiter as the prefix of a line inside a part
            body = body[:at] + b"\r\n--" + boundary + draw(st.sampled_from([b"x", b"-", b" x", b"-x"])) + body[at:]
        elif how == 6 and body:
            body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1:]
        elif how == 7:
            end = draw(st.integers(at, min(len(body), at + 30)))
            body = body[:end] + body[at:end] + body[end:]
        elif how == 8:  # header casing / colon spacing
            body = body.replace(b"Content-Disposition:", draw(st.sampled_from(
                [b"content-disposition :", b"CONTENT-DISPOSITION:", b"Content-Disposition\t:", b"Content Disposition:"])), 1)
        else:  # \r\n\r\n (end of headers) lost
            body = body.replace(b"\r\n\r\n", b"\r\n", 1)
    return body


@st.composite
def many_parts(draw: st.DrawFn) -> tuple[bytes, bytes, list[Part]]:
    """Huge part counts around maserve's limit (_MAX_PARTS), cheap to build."""
    count = draw(st.sampled_from([_MAX_PARTS - 1, _MAX_PARTS, _MAX_PARTS + 1, 3 * _MAX_PARTS]))
    boundary = draw(boundaries)
    name = draw(st.sampled_from([b"x", b"label"]))
    one = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\nv\r\n'
    return boundary, one * count + b"--" + boundary + b"--\r\n", [Part(name, None, b"v")] * count


# Mostly ordinary bodies: a tenth of them with a huge part count.
any_multipart = st.integers(0, 9).flatmap(lambda i: many_parts() if i == 0 else multipart_bodies())


# == strategies: JSON ============================================================================
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def _is_file(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "file"


def from_schema(schema: Any) -> st.SearchStrategy[Any]:
    """Instances of the JSON-schema subset config.json files use (built by hand: no hypothesis-jsonschema)."""
    if not isinstance(schema, dict) or not schema:
        return json_values
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    kinds = schema.get("type", "object" if "properties" in schema else None)
    if kinds is None:
        return json_values
    kinds = [kinds] if isinstance(kinds, str) else kinds
    return st.one_of([_typed(schema, kind) for kind in kinds if kind != "file"])


def _typed(schema: dict[str, Any], kind: str) -> st.SearchStrategy[Any]:
    if kind == "object":
        props = {n: s for n, s in (schema.get("properties") or {}).items() if not _is_file(s)}
        required = [n for n in schema.get("required", []) if n in props]
        fixed = st.fixed_dictionaries({n: from_schema(props[n]) for n in required},
                                      optional={n: from_schema(s) for n, s in props.items() if n not in required})
        if schema.get("additionalProperties", True) is False:
            return fixed
        extra = st.dictionaries(st.text(max_size=8).filter(lambda k: k not in props), json_values, max_size=2)
        return st.tuples(fixed, extra).map(lambda t: {**t[1], **t[0]})
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(from_schema(schema.get("items")), min_size=low, max_size=min(schema.get("maxItems", low + 4),
                                                                                     low + 4))
    if kind in ("number", "integer"):
        low, high = schema.get("minimum"), schema.get("maximum")
        ints = st.integers(None if low is None else math.ceil(low), None if high is None else math.floor(high))
        if kind == "integer":
            return ints
        return ints | st.floats(low, high, allow_nan=False, allow_infinity=False)
    if kind == "string":
        return st.text(max_size=min(schema.get("maxLength", 30), 30))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values


# JSON text Python's json module reads but which is not JSON (RFC 8259 §6: no NaN or Infinity), or
# which it cannot turn into a value (integers of more than 4300 digits, nesting past the recursion limit).
NASTY_JSON = [b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1" * 5000, b"-" + b"9" * 4301,
              b"[" * 5000 + b"]" * 5000, b"{\"a\":" * 3000 + b"1" + b"}" * 3000, b'"\\ud800"', b'"\\u0000"',
              b"1" * 4300, b"0.1e-99999", b"1.0", b"[]", b"{}", b'""', b"null", b"true"]
_SENTINEL = "\x00nasty\x00"


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, path + (index,))


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    value = copy.copy(value)
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


@st.composite
def json_documents(draw: st.DrawFn, schema: dict[str, Any]) -> tuple[bytes, Any]:
    """(body, the value before mutation or None): valid instances of the api's schema, or mutated ones."""
    value = draw(from_schema(schema))
    mutation = draw(st.sampled_from(["none", "replace", "drop", "add", "nasty", "bytes"]))
    path = draw(st.sampled_from(list(_paths(value))))
    text_value = value
    if mutation == "replace":
        text_value = _replace(value, path, draw(json_values))
    elif mutation == "drop" and path:
        holder = value
        for key in path[:-1]:
            holder = holder[key]
        holder = copy.copy(holder)
        del holder[path[-1]]
        text_value = _replace(value, path[:-1], holder)
    elif mutation == "add":
        text_value = _replace(value, path, [draw(json_values)] if draw(st.booleans()) else {"extra": draw(json_values)})
    elif mutation == "nasty":
        text_value = _replace(value, path, _SENTINEL)
    text = json.dumps(text_value, ensure_ascii=draw(st.booleans()))
    if mutation == "nasty":
        body = text.encode().replace(json.dumps(_SENTINEL).encode(), draw(st.sampled_from(NASTY_JSON)))
    else:
        body = text.encode(draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16"])))
    if mutation == "bytes":
        body = draw(mutated_bytes(body, b"x"))
    return body, value if mutation == "none" else None


# == 1. in process: nothing but 4xx ServiceErrors ================================================
@bounded(500)
@given(api=st.sampled_from(APIS), content_type=content_types())
@example(api=MNIST, content_type=b"multipart/form-data; boundary=\"a\\")
@example(api=APIS[-1], content_type=b"MULTIPART/FORM-DATA;BOUNDARY=\"\"")
def test_any_content_type_is_accepted_or_refused_with_4xx(api: Api, content_type: bytes) -> None:
    result = only_client_errors(lambda: check_content_type(api.spec, content_type))
    if isinstance(result, bytes):
        assert result  # a boundary is never empty


@bounded(400)
@given(api=st.sampled_from(HTTP_APIS), content_type=content_types(), body=st.binary(max_size=300))
@example(api=UPLOAD, content_type=b"multipart/form-data; boundary=x", body=b"--x--")
@example(api=APIS[-1], content_type=b"", body=b"")
def test_arbitrary_bytes_only_4xx(api: Api, content_type: bytes, body: bytes) -> None:
    boundary = only_client_errors(lambda: check_content_type(api.spec, content_type))
    if not isinstance(boundary, ServiceError):
        only_client_errors(lambda: decode(api.spec, body, boundary, api.schema))


# A form for /upload up to the value of its `meta` field (JSON text, converted to an object).
UPLOAD_HEAD = (b"--b\r\nContent-Disposition: form-data; name=file; filename=f\r\n\r\nx\r\n--b\r\n"
               b"Content-Disposition: form-data; name=repeat\r\n\r\n1\r\n--b\r\n"
               b"Content-Disposition: form-data; name=meta\r\n\r\n")


@bounded(300)
@given(data=st.data(), case=any_multipart)
@example(data=None, case=(b"b", UPLOAD_HEAD + b"[" * 5000 + b"\r\n--b--", []))  # past the recursion limit
@example(data=None, case=(b"b", UPLOAD_HEAD + b'{"source": 1, "x": ' + b"[" * 900 + b"]" * 900 + b"}\r\n--b--", []))
def test_multipart_bodies_only_4xx(data: st.DataObject | None, case: tuple[bytes, bytes, list[Part]]) -> None:
    """Each body against every api that reads multipart (mnist's /, multi's /upload, the no-apis
    default): generating a body costs far more than decoding it."""
    boundary, body, _ = case
    content_type = data.draw(multipart_content_types(boundary)) if data is not None else b"multipart/form-data; boundary=" + boundary
    if data is not None and data.draw(st.integers(0, 9)) == 0:  # the header names another boundary
        content_type = data.draw(multipart_content_types(data.draw(boundaries)))
    for api in MULTIPART_APIS:
        got = only_client_errors(lambda api=api: check_content_type(api.spec, content_type))
        if isinstance(got, bytes):
            only_client_errors(lambda api=api, got=got: decode(api.spec, body, got, api.schema))


# Text for each /upload form field: what its declared type converts (RFC 7578 §4 text, maserve.schema).
UPLOAD_FIELDS = {
    "repeat": st.integers(1, 3).map(str) | st.sampled_from([" 2 ", "3.0", "1\n"]),
    "verbose": st.sampled_from(["true", "false", "TRUE", " False "]),
    # Bounded: "1e999" is a JSON number (RFC 8259 §6 leaves its range to the reader) that Python reads
    # as inf; the echo fixture then answers inf, a 500 MASERVE.INVALID_RESPONSE by design
    # (tests/test_json_out.py). Not a decoding fault: see docs-fuzz-findings.md.
    "ratio": st.floats(-1e300, 1e300, allow_nan=False).map(repr) | st.integers(-10**6, 10**6).map(str)
    | st.just("null"),
    "meta": st.fixed_dictionaries({"source": st.text(max_size=10)}, optional={"x": json_values}).map(json.dumps),
    "tags": st.lists(st.text(max_size=5), max_size=3).map(json.dumps),
    "label": st.text(max_size=20),
}


@st.composite
def upload_forms(draw: st.DrawFn) -> tuple[bytes, bytes, dict[str, str], bytes]:
    """A well-formed /upload form: (boundary, body, text fields, file data)."""
    boundary = draw(boundaries)
    fields = draw(st.fixed_dictionaries({"repeat": UPLOAD_FIELDS["repeat"]},
                                        optional={k: v for k, v in UPLOAD_FIELDS.items() if k != "repeat"}))
    assume(not any(b"\r\n--" + boundary in v.encode() for v in fields.values()))
    data = without_delimiter(draw(part_data(boundary)), boundary) or b"x"
    chunks = [(name.encode(), None, value.encode()) for name, value in fields.items()]
    chunks.append((b"file", draw(filenames), data))
    chunks = draw(st.permutations(chunks))
    body = b""
    for name, filename, value in chunks:
        disposition = draw(dispositions(name, filename))  # a filename*= is ignored (RFC 7578 §4.2)
        headers = draw(part_headers(disposition, b"image/png" if filename is not None else None))
        body += b"--" + boundary + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + value + b"\r\n"
    return boundary, body + b"--" + boundary + b"--\r\n", fields, data


@bounded(150)
@given(form=upload_forms(), data=st.data())
def test_well_formed_upload_forms_decode_to_what_was_sent(form: tuple[bytes, bytes, dict[str, str], bytes],
                                                          data: st.DataObject) -> None:
    boundary, body, fields, file_data = form
    got = check_content_type(UPLOAD.spec, data.draw(multipart_content_types(boundary)))
    assert got == boundary
    inputs = decode(UPLOAD.spec, body, got, UPLOAD.schema)
    assert inputs.files["file"].data == file_data
    assert set(inputs.fields) == set(fields)
    expected = {name: json.loads(text.strip()) if name in ("ratio", "meta", "tags") else text
                for name, text in fields.items()}
    expected["repeat"] = int(float(fields["repeat"]))
    if "verbose" in fields:
        expected["verbose"] = fields["verbose"].strip().lower() == "true"
    assert inputs.fields == expected


@bounded(200)
@pytest.mark.parametrize("api", JSON_APIS, ids=repr)
@given(data=st.data())
@example(data=None)
def test_json_bodies_only_4xx_and_schema_valid_ones_decode(api: Api, data: st.DataObject | None) -> None:
    if data is None:  # the regression examples: Python reads them, JSON does not have them
        for nasty in NASTY_JSON:
            inside = (b'{"features": [' + nasty + b', 1, 2, 3], "numbers": [' + nasty + b'], "messages": '
                      b'[{"role": "user", "content": ' + nasty + b'}], "data": ' + nasty + b'}')
            for body in (nasty, inside):
                only_client_errors(lambda body=body: decode(api.spec, body, None, api.schema))
        return
    body, valid_value = data.draw(json_documents(api.spec.request_schema))
    content_type = data.draw(st.sampled_from([b"application/json", b"Application/JSON; charset=utf-8", b""]))
    boundary = only_client_errors(lambda: check_content_type(api.spec, content_type))
    if isinstance(boundary, ServiceError):
        return
    result = only_client_errors(lambda: decode(api.spec, body, boundary, api.schema))
    plain = without_files(api.spec.request_schema)
    if valid_value is not None and isinstance(valid_value, dict) and jsonschema.Draft7Validator(plain).is_valid(valid_value):
        assert not isinstance(result, ServiceError), f"a body its schema accepts was refused: {result.message}"
        assert result.fields == json.loads(body)
        event("schema-valid body decoded")


def test_nesting_at_every_depth_up_to_the_recursion_limit_is_4xx() -> None:
    """Regression: below the depth at which json.loads gives up (RecursionError, was a 500), the
    validator or its message can still run out of stack (jsonschema descends into `items`/`anyOf`:
    also a 500). Where exactly depends on the stack already in use, so every depth is tried, here
    and in a fresh thread (an inference thread's shallow stack, as in the server)."""
    chat = next(a for a in APIS if a.label == "chat:POST:/v1/chat/completions")
    limit = sys.getrecursionlimit()

    def bodies(depth: int) -> list[tuple[Api, bytes]]:
        nest = b"[" * depth + b"]" * depth
        return [(IRIS, b'{"features": ' + nest + b"}"),
                (chat, b'{"messages": [{"role": "user", "content": ' + nest + b"}]}"),
                (UPLOAD, UPLOAD_HEAD + b'{"source": 1, "x": ' + nest + b"}\r\n--b--"),
                (UPLOAD, UPLOAD_HEAD + nest + b"\r\n--b--")]

    failures: list[str] = []

    def run() -> None:
        for depth in range(limit - 150, limit + 5):
            for api, body in bodies(depth):
                try:
                    decode(api.spec, body, b"b", api.schema)
                except ServiceError as exc:
                    if not 400 <= exc.status < 500:
                        failures.append(f"{api} depth {depth}: {exc.status}")
                except Exception as exc:  # noqa: BLE001 (any other exception is the failure)
                    failures.append(f"{api} depth {depth}: {type(exc).__name__}")

    run()
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not failures, failures[:5]


@bounded(300)
@given(api=st.sampled_from(WS_APIS), message=st.one_of(st.binary(max_size=200), st.text(max_size=200),
                                                        st.builds(lambda b: b.decode("latin-1"), st.sampled_from(NASTY_JSON))))
@example(api=WS_APIS[0], message=b"")
def test_websocket_messages_only_4xx(api: Api, message: bytes | str) -> None:
    only_client_errors(lambda: decode_message(api.spec, message, api.schema))


# == 2. differential: maserve's splitter against python-multipart ================================
class Refused(Exception):
    def __init__(self, reason: str, offset: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


Split = list[tuple[dict[bytes, bytes], bytes]]


def ours(body: bytes, boundary: bytes) -> Split | Refused:
    try:
        return _split_multipart(body, boundary)
    except MalformedRequest as exc:
        return Refused(exc.message)


def theirs(body: bytes, boundary: bytes) -> Split | Refused:
    """python-multipart's MultipartParser, with the callbacks python-multipart's FormParser uses
    (header names lower-cased, values stripped of spaces and tabs, the last of a repeated header
    counts) minus Content-Transfer-Encoding decoding (RFC 7578 §4.7: deprecated; maserve ignores
    it) and without its header count and size limits (limits, not parsing: not compared here).
    The body is written in one chunk; parsing it is over only when the parser reached END
    (its finalize() checks nothing)."""
    got: Split = []
    state: dict[str, Any] = {"headers": {}, "data": [], "name": [], "value": []}

    def header_end() -> None:
        state["headers"][b"".join(state["name"]).lower()] = b"".join(state["value"]).strip(b" \t")
        state["name"].clear()
        state["value"].clear()

    callbacks = {
        "on_part_begin": lambda: state.update(headers={}, data=[]),
        "on_header_field": lambda d, s, e: state["name"].append(d[s:e]),
        "on_header_value": lambda d, s, e: state["value"].append(d[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda d, s, e: state["data"].append(d[s:e]),
        "on_part_end": lambda: got.append((state["headers"], b"".join(state["data"]))),
    }
    parser = MultipartParser(boundary, callbacks, max_header_count=10**9, max_header_size=10**9)
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        return Refused(str(exc), exc.offset)
    if parser.state != MultipartState.END:
        return Refused(f"incomplete: ended in state {parser.state.name}")
    return got


def _first_delimiter(body: bytes, boundary: bytes) -> int:
    """Where the first delimiter starts per RFC 2046 §5.1.1: at the start or after a CRLF (-1: none)."""
    if body.startswith(b"--" + boundary):
        return 0
    found = body.find(b"\r\n--" + boundary)
    return found + 2 if found >= 0 else -1


def _their_start(body: bytes) -> int:
    """Where python-multipart starts reading a delimiter: at 0, or after leading CR/LF at the first
    '-' anywhere (its START state: `data.find(b"-")`)."""
    return body.find(b"-") if body[:1] in (b"\r", b"\n") else 0


def _prefix_delimiter_in_part(body: bytes, boundary: bytes) -> bool:
    """A line inside the body starts with the delimiter but is neither a delimiter nor a close delimiter."""
    return bool(re.search(rb"\r\n--" + re.escape(boundary) + rb"(?![ \t]*\r\n|--)", body))


def _padding_after_first_delimiter(body: bytes, boundary: bytes) -> bool:
    first = _first_delimiter(body, boundary)
    return first >= 0 and body[first + 2 + len(boundary):][:1] in (b" ", b"\t")


@dataclass(frozen=True)
class Allowed:
    """A body one parser accepts and the other refuses, allowed because the RFC sides with one of
    them (or allows both): who refuses, what, a check on the body (and the two results), the RFC."""

    refuser: str
    what: str
    check: Callable[[bytes, bytes, Any, Any], bool]
    rfc: str


ONE_SIDED = [
    Allowed("python-multipart", "transport padding after the first delimiter",
            lambda body, b, o, t: _padding_after_first_delimiter(body, b)
            and t.offset == _first_delimiter(body, b) + 2 + len(b),
            ("RFC 2046 §5.1.1: `dash-boundary transport-padding CRLF`; receivers MUST handle padding. "
             "python-multipart handles it after later delimiters only.")),
    Allowed("python-multipart", "a preamble (or junk before the first delimiter)",
            lambda body, b, o, t: _first_delimiter(body, b) != _their_start(body),
            ("RFC 2046 §5.1.1: `[preamble CRLF] dash-boundary`; a preamble is allowed and ignored. "
             "python-multipart only skips CR/LF before the first '-', then demands the delimiter.")),
    Allowed("python-multipart", "a part header line it does not tokenize",
            lambda body, b, o, t: bool(re.search(r"invalid character|0-length header|LF character at end of "
                                                 r"header|LF at end of headers", t.reason)),
            ("RFC 5322 §3.6.8 (field-name: any printable but ':') and §4.5 (obsolete syntax: white space "
             "before the colon), which MIME part headers follow (RFC 2045 §3); python-multipart takes HTTP's "
             "token (RFC 9110 §5.1). A lone CR in a value is not RFC 5322 (§2.2) either: maserve reads the line "
             "up to CRLF, python-multipart refuses. maserve only reads Content-Disposition and Content-Type, so "
             "its leniency is harmless.")),
    Allowed("maserve", "a delimiter as the prefix of a line inside a part",
            lambda body, b, o, t: "not followed by CRLF" in o.reason and _prefix_delimiter_in_part(body, b),
            ("RFC 2046 §5.1.1: 'The boundary delimiter MUST NOT appear inside any of the encapsulated parts, "
             "on a line by itself or as the prefix of any line': such a body is broken. python-multipart keeps "
             "the line as data.")),
    Allowed("maserve", "no delimiter at the start or after a CRLF",
            lambda body, b, o, t: "never occurs" in o.reason and _their_start(body) > 0,
            ("RFC 2046 §5.1.1: 'The boundary delimiter MUST occur at the beginning of a line, i.e., following "
             "a CRLF'. python-multipart, after a leading CR or LF, jumps to the first '-' anywhere.")),
    Allowed("maserve", f"more than {_MAX_PARTS} parts",
            lambda body, b, o, t: "more than" in o.reason and len(t) > _MAX_PARTS,
            "No RFC limit: maserve's own bound on work per request (decode._MAX_PARTS)."),
]


def _one_sided(refuser: str, body: bytes, boundary: bytes, mine: Any, other: Any) -> str:
    for allowed in ONE_SIDED:
        if allowed.refuser == refuser and allowed.check(body, boundary, mine, other):
            return f"{refuser} refuses: {allowed.what}"
    refusal = mine if refuser == "maserve" else other
    raise AssertionError(f"{refuser} refuses ({refusal.reason!r}) a body the other accepts, and no documented "
                         f"exception covers it:\nboundary={boundary!r}\nbody={body!r}\n"
                         f"maserve={mine!r}\npython-multipart={other!r}")


# A Content-Disposition value both parsers must read alike: RFC 7578 §4.2 / RFC 2183 §2 / RFC 2045
# §5.1, `disposition *(";" token "=" (token / quoted-string))`, whitespace only spaces and tabs. Left
# out, and so not compared, are values outside that grammar (each parser recovers its own way: an
# unquoted value with spaces, a stray quote...) and two documented differences inside it:
#  - a quoted-pair other than \" : RFC 822 §3.4.4 / RFC 9110 §5.6.4 make `\x` mean `x`, as maserve
#    reads it; python-multipart only unescapes \\ and \" , and miscounts quotes after `\\"`.
#  - a filename that looks like a Windows path: python-multipart keeps what follows the last
#    backslash (an old IE workaround). RFC 7578 §4.2 leaves path information to the receiver;
#    maserve hands the name to the model as sent.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[^"\\\r\n]|\\")*"'
_DISPOSITION = re.compile(rb"[ \t]*" + _TOKEN + rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"[ \t]*=[ \t]*(?:" + _TOKEN + rb"|"
                          + _QUOTED + rb"))*[ \t]*")


def _comparable_disposition(value: bytes | None, theirs_: bytes | None) -> bool:
    if value is None and theirs_ is None:
        return True  # no Content-Disposition: both refuse the part (RFC 7578 §4.2)
    if value is None or value != theirs_ or not _DISPOSITION.fullmatch(value):
        return False
    filename = parse_options_header(value)[1].get(b"filename", b"")
    return not (filename[1:3] == b":\\" or filename[:2] == b"\\\\" or b"\\" in filename)


def _parsed_like_maserve(split: Split) -> tuple[dict[str, Any], dict[str, str]] | str:
    """What maserve's _parse_multipart must make of python-multipart's parts, read with
    python-multipart's own parameter parser: a name is required (RFC 7578 §4.2), one file per field
    (maserve's rule, 400 TOO_MANY_FILES), the last of repeated text fields counts."""
    files: dict[str, Any] = {}
    fields: dict[str, str] = {}
    for headers, data in split:
        params = parse_options_header(headers.get(b"content-disposition", b""))[1]
        if b"name" not in params:
            return "MASERVE.MALFORMED_REQUEST"
        name = params[b"name"].decode("utf-8", "replace")
        if b"filename" in params:
            if name in files:
                return "MASERVE.TOO_MANY_FILES"
            files[name] = (params[b"filename"].decode("utf-8", "replace"), data)
        else:
            fields[name] = data.decode("utf-8", "replace")
    return files, fields


PADDED = (b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--b \t\r\n"  # RFC 2046 §5.1.1
          b"Content-Disposition: form-data; name=b\r\n\r\n2\r\n--b--")


@bounded(400)
@given(case=any_multipart)
@example(case=(b"b", PADDED, []))  # transport padding: maserve refused it before
@example(case=(b"b", b"preamble\r\n--b\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--b--", []))
@example(case=(b"b", b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--bx\r\n--b--", []))
def test_split_matches_python_multipart(case: tuple[bytes, bytes, list[Part]]) -> None:
    boundary, body, _ = case
    mine, other = ours(body, boundary), theirs(body, boundary)
    if isinstance(mine, Refused) and isinstance(other, Refused):
        event("both refuse")
        return
    if isinstance(mine, Refused) or isinstance(other, Refused):
        event(_one_sided("maserve" if isinstance(mine, Refused) else "python-multipart", body, boundary, mine, other))
        return
    if _first_delimiter(body, boundary) != _their_start(body):
        # python-multipart started at a '-' that is no delimiter line (RFC 2046 §5.1.1): what it
        # calls the first part is part of the preamble. Documented in ONE_SIDED's first entry.
        event("both accept: python-multipart starts inside the preamble")
        return
    event("both accept")
    assert [data for _, data in mine] == [data for _, data in other], "the parts' data differ"
    # Header values: maserve strips all ASCII white space at the ends, python-multipart spaces and
    # tabs; other white space (VT, FF, LF) has no place in a header value (RFC 5322 §2.2).
    assert [h for h, _ in mine] == [{k: v.strip() for k, v in h.items()} for h, _ in other], "the headers differ"

    # Names and file names, each parser reading Content-Disposition its own way: compared where the
    # header is well-formed, and where python-multipart's raw value is maserve's (not so when the
    # value ends with a bare CR, LF, VT or FF, which maserve strips and python-multipart keeps).
    if not all(_comparable_disposition(m.get(b"content-disposition"), o.get(b"content-disposition"))
               for (m, _), (o, _) in zip(mine, other)):
        event("names not compared: a Content-Disposition outside RFC 7578 §4.2's grammar")
        return
    expected = _parsed_like_maserve(other)
    try:
        files, fields = _parse_multipart(body, boundary)
    except ServiceError as exc:
        assert exc.error_code == expected, f"maserve refused with {exc.error_code}: {exc.message}; expected {expected}"
        event(f"both parse: {exc.error_code}")
        return
    assert not isinstance(expected, str), f"maserve accepted a form python-multipart reads as {expected}"
    assert fields == expected[1]
    assert {name: (f.filename, f.data) for name, f in files.items()} == expected[0]
    event("both parse: same names, file names and data")


@bounded(300)
@given(boundary=boundaries, data=st.data())
@example(boundary=b"a b", data=None)
def test_boundary_parameter_is_read_as_sent(boundary: bytes, data: st.DataObject | None) -> None:
    """The boundary maserve reads from a well-formed Content-Type is the one sent, and python-multipart's."""
    content_type = data.draw(multipart_content_types(boundary)) if data is not None else b'multipart/form-data; boundary="a\\ b"'
    assert check_content_type(MNIST.spec, content_type) == boundary
    if b"\\" in content_type:
        # quoted-pairs: `\x` is `x` (RFC 9110 §5.6.4, RFC 822 §3.4.4), as maserve reads them;
        # python-multipart only unescapes \\ and \" . Documented difference, not compared.
        event("quoted-pair: not compared with python-multipart")
        return
    assert parse_options_header(content_type)[1].get(b"boundary") == boundary


# == 3. end to end: real servers, fuzzed requests ================================================
IRIS_DIR = MODEL_DIRS["iris"]
MULTI_DIR = MODEL_DIRS["multi"]


@pytest.fixture(scope="module")
def iris_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Answers validated too: an answer outside the response schema would be a 500 here."""
    server = start_server(tmp_path_factory.mktemp("fuzz-iris"), IRIS_DIR,
                          env={"MASERVE_WORKERS": "1", "MASERVE_VALIDATE_RESPONSES": "1"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("fuzz-multi"), MULTI_DIR, env={"MASERVE_WORKERS": "1"})
    yield server
    server.stop()


header_values = st.text(string.printable.replace("\r", "").replace("\n", "").replace("\x0b", "").replace("\x0c", "")
                        + "\xe9\xff", max_size=40)
extra_headers = st.lists(st.tuples(st.text(TOKEN_CHARS, min_size=1, max_size=12), header_values), max_size=3)


def send(server: Server, path: str, body: bytes, headers: list[tuple[str, str]], chunks: list[int] | None) -> tuple[int, bytes]:
    """POST over a fresh connection, 10 s socket timeout: a hang fails the test. `chunks`: chunked
    transfer coding with these chunk sizes, else Content-Length."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value.encode("latin-1"))
        conn.putheader("Transfer-Encoding" if chunks is not None else "Content-Length",
                       "chunked" if chunks is not None else str(len(body)))
        conn.endheaders()
        if chunks is None:
            conn.send(body)
        else:
            at = 0
            for size in chunks + [len(body)]:
                piece = body[at:at + size]
                at += len(piece)
                if piece:
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def check_reply(status: int, body: bytes) -> Any:
    assert status < 500, f"{status}: {body[:500]!r}"
    value = json.loads(body)
    assert isinstance(value, dict), body
    if status >= 400:
        assert set(value) == {"error_code", "error_msg"}, value
        assert all(isinstance(v, str) for v in value.values()), value
        event(f"{status} {value['error_code']}")
    else:
        event(f"{status}")
    return value


def still_healthy(server: Server) -> None:
    assert server.get("/health").status == 200
    assert "unexpected error" not in server.logs()


chunkings = st.none() | st.lists(st.integers(1, 64), max_size=4)


@bounded(50, deadline_ms=10_000)
@given(doc=json_documents(IRIS.spec.request_schema), ctype=st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "Application/JSON", "text/plain", ""]),
    extra=extra_headers, chunks=chunkings, raw=st.none() | st.binary(max_size=200))
@example(doc=(b'{"features": [NaN, 1, 2, 3]}', None), ctype="application/json", extra=[], chunks=None, raw=None)
@example(doc=(b'{"features": [' + b"1" * 5000 + b', 1, 2, 3]}', None), ctype="application/json", extra=[],
         chunks=None, raw=None)
@example(doc=(b'{"features": ' + b"[" * 990 + b"]" * 990 + b'}', None), ctype="application/json", extra=[],
         chunks=None, raw=None)
@example(doc=(b"[" * 100_000, None), ctype="application/json", extra=[], chunks=None, raw=None)
def test_iris_json_end_to_end(iris_server: Server, doc: tuple[bytes, Any], ctype: str,
                              extra: list[tuple[str, str]], chunks: list[int] | None, raw: bytes | None) -> None:
    body = raw if raw is not None else doc[0]
    headers = ([("Content-Type", ctype)] if ctype else []) + extra
    value = check_reply(*send(iris_server, "/", body, headers, chunks))
    if (doc[1] is not None and raw is None and ctype.lower().startswith("application/json")
            and jsonschema.Draft7Validator(IRIS.spec.request_schema).is_valid(doc[1])):
        assert "label" in value, value  # a body the schema accepts is answered


@bounded(50, deadline_ms=10_000)
@given(case=st.one_of(upload_forms().map(lambda f: (f[0], f[1])), any_multipart.map(lambda c: (c[0], c[1]))),
       data=st.data(), extra=extra_headers, chunks=chunkings)
@example(case=(b"b", UPLOAD_HEAD + b"[" * 5000 + b"\r\n--b--"), data=None, extra=[], chunks=None)
@example(case=(b"b", UPLOAD_HEAD + b'{"source": 1, "x": ' + b"[" * 980 + b"]" * 980 + b"}\r\n--b--"),
         data=None, extra=[], chunks=None)
def test_upload_multipart_end_to_end(multi_server: Server, case: tuple[bytes, bytes], data: st.DataObject | None,
                                     extra: list[tuple[str, str]], chunks: list[int] | None) -> None:
    boundary, body = case
    ctype = data.draw(multipart_content_types(boundary)) if data is not None else b"multipart/form-data; boundary=b"
    headers = [("Content-Type", ctype.decode("latin-1"))] + extra
    check_reply(*send(multi_server, "/upload", body, headers, chunks))


@bounded(50, deadline_ms=10_000)
@given(target=st.sampled_from(["iris", "upload", "sum"]), ctype=content_types(), extra=extra_headers,
       request_id=st.none() | header_values, body=st.binary(max_size=100) | st.sampled_from(NASTY_JSON))
def test_fuzzed_headers_end_to_end(iris_server: Server, multi_server: Server, target: str, ctype: bytes,
                                   extra: list[tuple[str, str]], request_id: str | None, body: bytes) -> None:
    server, path = {"iris": (iris_server, "/"), "upload": (multi_server, "/upload"),
                    "sum": (multi_server, "/sum")}[target]
    value = ctype.decode("latin-1")
    assume(not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value))  # http.client refuses CTLs in a header value
    headers = [("Content-Type", value)] + extra + ([("X-Request-Id", request_id)] if request_id is not None else [])
    check_reply(*send(server, path, body, headers, None))


def test_servers_still_healthy_after_the_fuzzing(iris_server: Server, multi_server: Server) -> None:
    """Runs last (file order): both servers answer /health, and no request hit the app's catch-all."""
    still_healthy(iris_server)
    still_healthy(multi_server)
