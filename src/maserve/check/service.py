"""The checks that talk HTTP to the service: health, apis (samples → expected answers), logs."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import jsonschema

from maserve.check.client import fetch, send
from maserve.check.result import FAIL, PASS, SKIP, WARN, Result, one_line, progress
from maserve.check.samples import Sample, route
from maserve.check.target import Target
from maserve.config import JSON, MULTIPART, ApiSpec
from maserve.validate import EVENT_STREAM

HEALTH_BODY = {"health": "true"}
POLL = 0.2
URL_HEALTH_WAIT = 10.0  # a service at a URL should already be up
LOG_WAIT = 3.0


def wait_healthy(target: Target, path: str, limit: float, initial_delay: float | None) -> tuple[Result, bool]:
    """Poll GET `path` until it answers 200 (bounded by `limit` s), then judge that answer."""
    progress(f"waiting (up to {limit:g} s) for GET {path} to answer 200")
    deadline = time.monotonic() + limit
    last = "no answer"
    for _ in range(int(limit / POLL) + 2):
        try:
            reply = fetch(target.endpoint, "GET", path, timeout=5)
        except (OSError, http.client.HTTPException) as exc:
            last = f"no answer ({type(exc).__name__}: {exc})"
        else:
            last = f"{reply.status} {reply.body[:80]!r}"
            if reply.status == 200:
                return _judge_health(target, path, reply.body, initial_delay), True
            if 400 <= reply.status < 500:  # not "starting up" (503): the route is wrong or missing
                return Result("health", FAIL, one_line(f"GET {path} → {last}, want 200")), False
        if target.proc is not None and target.proc.poll() is not None:
            return Result("health", FAIL, one_line(f"process exited ({target.proc.returncode}); last: {last}")), False
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    return Result("health", FAIL, one_line(f"GET {path} never answered 200 in {limit:g} s; last: {last}")), False


def _judge_health(target: Target, path: str, body: bytes, initial_delay: float | None) -> Result:
    try:
        value: Any = json.loads(body)
    except ValueError:
        value = None
    if value != HEALTH_BODY:
        return Result("health", FAIL, one_line(f'GET {path} → 200 {body[:120]!r}, want exactly {{"health": "true"}}'))
    if not target.is_command:
        return Result("health", PASS, f'GET {path} → 200 {{"health": "true"}}')
    took = time.monotonic() - target.started
    against = f"initial_delay_seconds {initial_delay:g}" if initial_delay is not None else "no initial_delay_seconds"
    verdict = WARN if initial_delay is not None and took > initial_delay else PASS
    return Result("health", verdict, f'GET {path} → 200 {{"health": "true"}} {took:.1f} s after start ({against})')


def check_apis(
    target: Target, apis: tuple[ApiSpec, ...], samples: dict[str, list[Sample]], problems: list[str]
) -> Result:
    sent, streamed, failures = 0, 0, []
    conn = target.endpoint.connect()
    try:
        for api in apis:
            if api.websocket:
                continue  # the websocket row
            for sample in samples.get(route(api), []):
                sent += 1
                try:
                    reply = send(conn, sample.method, sample.url, sample.body, sample.headers)
                except (OSError, http.client.HTTPException) as exc:
                    failures.append(f"{sample.label}: no answer ({type(exc).__name__})")
                    conn.close()
                    conn = target.endpoint.connect()
                    continue
                if api.response_content_type == EVENT_STREAM and reply.content_type == EVENT_STREAM:
                    streamed += 1  # the stream row judges it
                    continue
                failures += [f"{sample.label}: {p}" for p in _judge_answer(api, sample, reply.status,
                                                                           reply.content_type, reply.body)]
    finally:
        conn.close()
    missing = [route(a) for a in apis if not a.websocket and not samples.get(route(a))]
    if failures:
        return Result("apis", FAIL, one_line(f"{len(failures)} problem(s) in {sent} sample request(s): "
                                             + "; ".join(failures)))
    notes = problems + [f"no samples for {r}" for r in missing]
    if sent == 0:
        return Result("apis", WARN, one_line("no samples (samples/expected.json): " + "; ".join(notes)))
    passed = (f"{sent - streamed} sample request(s) answered as expected (status, Content-type, schema, "
              "the exact answer where expected.json gives one)")
    if streamed:
        passed += f"; {streamed} answered with a stream (see the stream row)"
    if notes:
        return Result("apis", WARN, one_line(f"{passed}; " + "; ".join(notes)))
    return Result("apis", PASS, passed)


def _judge_answer(api: ApiSpec, sample: Sample, status: int, ctype: str, body: bytes) -> list[str]:
    if status != 200:
        return [f"status {status} {body[:100]!r}"]
    out = []
    declared = api.response_content_type
    if ctype != declared and not (declared not in (JSON, MULTIPART) and ctype == JSON):  # a pass-through type
        out.append(f"Content-type {ctype or 'missing'}, config.json declares {api.response_content_type}")
    try:
        value = json.loads(body)
    except ValueError:
        return out + [f"not JSON: {body[:100]!r}"]
    validator = jsonschema.validators.validator_for(api.response_schema, default=jsonschema.Draft7Validator)
    for error in list(validator(api.response_schema).iter_errors(value))[:3]:
        where = "/".join(map(str, error.absolute_path)) or "root"
        out.append(f"breaks the response schema: {error.message} (at {where})")
    if sample.expected is not None and value != sample.expected:
        out.append(f"answered {json.dumps(value)[:100]}, expected {json.dumps(sample.expected)[:100]}")
    return out


def check_logs(target: Target, health_path: str, sample: Sample | None) -> Result:
    """Every request should leave a line on the captured output: count lines around a few requests."""
    if not target.is_command:
        return Result("logs", SKIP, "the output of a service at a URL cannot be seen; use --cmd")
    requests: list[tuple[str, str, bytes | None, dict[str, str]]] = [("GET", health_path, None, {})] * 2
    if sample is not None:
        requests.append((sample.method, sample.url, sample.body, sample.headers))
    time.sleep(0.3)  # let start-up lines land before counting
    before = target.line_count()
    for method, path, body, headers in requests:
        try:
            fetch(target.endpoint, method, path, body, headers, timeout=10)
        except (OSError, http.client.HTTPException) as exc:
            return Result("logs", FAIL, one_line(f"{method} {path}: no answer ({exc})"))
    new = 0
    deadline = time.monotonic() + LOG_WAIT
    for _ in range(int(LOG_WAIT / 0.05) + 2):
        new = target.line_count() - before
        if new >= len(requests) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    what = f"{len(requests)} requests → {new} new output line(s)"
    if new >= len(requests):
        return Result("logs", PASS, what)
    return Result("logs", FAIL, f"{what}: each request should leave a line on stdout")
