"""Schemathesis against each example's GET /openapi.json: the document and the server must agree.

`st run --checks all` generates valid and invalid requests from the document and checks every
answer against it (status codes, content types, response and SSE event schemas, 405 with Allow,
negative data rejected, valid data accepted). A failure means either the server misbehaves or
the document lies about it; both are bugs. Each run is bounded (examples per operation, request
timeout, a process timeout) and seeded, so CI repeats the same requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, Server, start_server

from maserve.config import load_config
from maserve.openapi import openapi_document

ST = Path(sys.executable).parent / "st"
SEED = 20240614
MAX_EXAMPLES = 200  # per operation: about 10 s for the slowest example (chat) on 2 cores
RUN_TIMEOUT_S = 150

# Checks that cannot pass for an example, each with its reason. Keep this short: a failure is
# fixed in maserve or in the document (maserve/openapi.py) unless it is one of these.
EXCLUDED: dict[str, dict[str, str]] = {
    "mnist": {
        # `images` is any binary string to the schema; schemathesis sends valid PNGs of a blank pixel
        # or random bytes, which the model rightly refuses (400 MASERVE.NO_DIGIT / INVALID_IMAGE).
        "positive_data_acceptance": "a schema-valid file is not necessarily an image of a digit",
    },
}

EXAMPLES = ["mnist", "iris", "tabular", "chat"]


@pytest.fixture(scope="module", params=EXAMPLES)
def example_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server]]:
    """One real server per example (one worker: schemathesis sends one request at a time)."""
    name: str = request.param
    model_dir = ROOT / "examples" / name
    if name == "mnist" and not (model_dir / "model.onnx").is_file():
        pytest.skip("examples/mnist/model.onnx missing (trained separately: make train)")
    server = start_server(tmp_path_factory.mktemp(f"st-{name}"), model_dir, env={"MASERVE_WORKERS": "1"})
    yield name, server
    server.stop()


def st_command(name: str, port: int) -> list[str]:
    """The `st run` command line for one example: all checks but its documented exclusions."""
    command = [
        str(ST), "run", f"http://127.0.0.1:{port}/openapi.json",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--request-timeout", "10",
        "--workers", "1",
        "--generation-database", "none",  # nothing remembered between runs: the seed decides
        "--continue-on-failure",  # report every failure of an operation, not only the first
        "--no-color",
    ]
    if EXCLUDED.get(name):
        command += ["--exclude-checks", ",".join(EXCLUDED[name])]
    return command


def test_schemathesis_finds_nothing(example_server: tuple[str, Server], tmp_path: Path) -> None:
    name, server = example_server
    assert ST.is_file(), f"{ST} missing: install the test extras (pip install -e '.[test]')"
    # cwd: st keeps a cache of failures (.schemathesis/) there and replays it on the next run.
    result = subprocess.run(
        st_command(name, server.port), check=False, cwd=tmp_path, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"schemathesis found failures in examples/{name} (exit {result.returncode}):\n"
        f"{result.stdout}\n{result.stderr}\n-- server log, warnings and errors --\n{_problems(server)}"
    )


def _problems(server: Server) -> str:
    """The server's log without its INFO lines (one per request), where a 500's traceback is."""
    return "\n".join([line for line in server.logs().splitlines() if '"level": "INFO"' not in line][-60:])


def test_openapi_streaming_api_documents_json_and_events() -> None:
    """An SSE api answers JSON when `predict` returns a dict (OpenAI's "stream": false) and events
    when it returns an iterator: the document declares both, an event per `schema` entry."""
    doc = openapi_document(load_config(ROOT / "examples" / "chat" / "config.json"))
    content = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    config = json.loads((ROOT / "examples" / "chat" / "config.json").read_text())
    assert content["application/json"]["schema"] == config["apis"][0]["response"]["data"]
    events = content["text/event-stream"]["schema"]["anyOf"]
    assert [e["properties"]["event"]["const"] for e in events] == ["message", "error"]
    assert events[1]["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/Error"}
    models = doc["paths"]["/v1/models"]["get"]
    assert "requestBody" not in models and set(models["responses"]["200"]["content"]) == {"application/json"}
