"""`maserve batch --mapping-type csv`: ModelArts' documented mapping example, the tabular example
run through `--cmd` (start, health, run, SIGTERM), the rule template, and bad rules refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from batch_helpers import BATCH_FORM, TABULAR, by_source, leftovers, manifest_lines, run_batch
from helpers import MASERVE_BIN, ROOT, RUN_SH, free_port, start_server

IRIS = ROOT / "examples" / "iris"
# ModelArts' "Example Mapping" (Deploying as a Batch Service), verbatim (tests/modelarts_examples/):
# the rule, the CSV, and the request the first row becomes.
EXAMPLES = Path(__file__).resolve().parent / "modelarts_examples"
DOC_RULE = json.loads((EXAMPLES / "batch_mapping_example.mapping_rule.json").read_text())
DOC_CSV = "5.1,3.5,1.4,0.2\n4.9,3.0,1.4,0.2\n4.7,3.2,1.3,0.2\n"
DOC_REQUEST = json.loads((EXAMPLES / "batch_mapping_example.request.json").read_text())


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_documented_mapping_example_comes_out_exactly(tmp_path: Path) -> None:
    """The fixture answers the fields it received: the service got exactly the documented body."""
    server = start_server(tmp_path, BATCH_FORM)
    try:
        src = _write(tmp_path / "in" / "train.csv", DOC_CSV)
        rule = _write(tmp_path / "rule.json", json.dumps(DOC_RULE))
        dest = tmp_path / "out"
        done = run_batch(f"http://127.0.0.1:{server.port}", "--config", str(BATCH_FORM), "--src-path", str(src.parent),
                         "--dest-path", str(dest), "--mapping-type", "csv", "--mapping-rule", str(rule))
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    [record] = manifest_lines(dest)
    assert record["result"] == "SUCCESSFUL" and record["source"] == str(src)
    assert record["inference-loc"].endswith("/train.csv_result.txt")  # one result file for the whole CSV
    lines = [json.loads(line) for line in Path(record["inference-loc"]).read_text().splitlines()]
    assert lines[0] == DOC_REQUEST
    rows = [[float(v) for v in row.split(",")] for row in DOC_CSV.split()]
    assert lines == [{"data": {"req_data": [dict(zip(("input_1", "input_2", "input_3", "input_4"), r))]}}
                     for r in rows]


def test_tabular_example_through_cmd_with_bad_rows(tmp_path: Path) -> None:
    """`--cmd` starts the service, waits for health, runs, stops it with SIGTERM and reports its
    exit. Rows answer in row order; a row that does not convert and a short row (a required field
    left out: the service's 400) fail alone with their row numbers; a non-CSV input is FAILED."""
    heldout = json.loads((IRIS / "samples" / "heldout.json").read_text())
    good = "".join(",".join(map(str, row["features"])) + "\n" for row in heldout)
    src = tmp_path / "in"
    clean = _write(src / "clean.csv", "sepal_l,sepal_w,petal_l,petal_w\n" + good)
    bad = _write(src / "bad.csv", "a,b,c,d\n" + good[:200].rsplit("\n", 1)[0] + "\n5.0,abc,1.4,0.2\n\n5.0,3.4,1.5\n" + good)
    other = _write(src / "notes.txt", "1,2,3,4\n")
    port = free_port()
    cmd = (f"MASERVE_MODEL_DIR={TABULAR} MASERVE_PORT={port} MASERVE_WORKERS=2 MASERVE_GRACE_SECONDS=1 "
           f"MASERVE_BIN={MASERVE_BIN} sh {RUN_SH}")
    dest = tmp_path / "out"
    done = run_batch("--cmd", cmd, "--port", str(port), "--config", str(TABULAR), "--src-path", str(src),
                     "--dest-path", str(dest), "--mapping-type", "csv", "--csv-header",
                     "--mapping-rule", str(TABULAR / "samples" / "mapping_rule.json"))
    assert done.returncode == 1, done.stderr
    assert "service exited with status 0" in done.stderr
    records = by_source(manifest_lines(dest))
    assert records[str(clean)]["result"] == "SUCCESSFUL"
    answers = [json.loads(line) for line in Path(records[str(clean)]["inference-loc"]).read_text().splitlines()]
    assert [a["data"]["resp_data"][0]["predict"] for a in answers] == [row["label"] for row in heldout]
    assert records[str(other)] == {"source": str(other), "result": "FAILED",
                                   "error_message": "notes.txt: csv mapping reads only .csv files"}
    failed = records[str(bad)]
    assert failed["result"] == "FAILED" and failed["inference-loc"].endswith("/bad.csv_result.txt")
    lines = [json.loads(line) for line in Path(failed["inference-loc"]).read_text().splitlines()]
    before = good[:200].rsplit("\n", 1)[0].count("\n") + 1  # rows ahead of the bad one, after the header (row 1)
    assert len(lines) == before + 2 + len(heldout)
    assert lines[before] == {"row": before + 2, "result": "FAILED", "error_message":
                             f"row {before + 2}, column 1 ($.data.req_data[0].input_2): 'abc' is not a number"}
    short = lines[before + 1]
    assert short["row"] == before + 3 and "input_4" in short["error_message"]  # the service's 400 message
    assert f"2 of {len(lines)} rows failed (first: row {before + 2}" in failed["error_message"]
    assert all("data" in line for i, line in enumerate(lines) if i not in (before, before + 1))
    assert leftovers(dest) == []


def test_the_printed_template_is_a_working_rule(tmp_path: Path) -> None:
    """`maserve batch mapping-rule` numbers the leaves in schema order; iris' four features
    (minItems 4) get a column each, so the template runs as it is."""
    printed = subprocess.run([str(MASERVE_BIN), "batch", "mapping-rule", str(IRIS)], capture_output=True, text=True,
                             timeout=30, check=True)
    rule = json.loads(printed.stdout)
    assert [item["index"] for item in rule["properties"]["features"]["items"]] == [0, 1, 2, 3]
    assert "4 field(s) numbered 0-3" in printed.stderr
    rule_path = _write(tmp_path / "rule.json", printed.stdout)
    src = _write(tmp_path / "in" / "rows.csv", "6.3,2.5,4.9,1.5\n")
    server = start_server(tmp_path, IRIS)
    try:
        dest = tmp_path / "out"
        done = run_batch(f"http://127.0.0.1:{server.port}", "--config", str(IRIS), "--src-path", str(src.parent),
                         "--dest-path", str(dest), "--mapping_type", "csv", "--mapping_rule", str(rule_path))
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    [record] = manifest_lines(dest)
    expected = json.loads((IRIS / "samples" / "expected.json").read_text())["request.json"]
    assert json.loads(Path(record["inference-loc"]).read_text()) == expected  # request.json is that row


def _leaf(kind: str = "number", **extra: object) -> dict:
    return {"type": kind, **extra}


def _tabular_rule(record: dict) -> dict:
    return {"type": "object", "properties": {"data": {"type": "object", "properties": {
        "req_data": {"type": "array", "items": [{"type": "object", "properties": record}]}}}}}


@pytest.mark.parametrize(("rule", "reason"), [
    (_tabular_rule({"input_1": _leaf(index=0), "input_9": _leaf(index=1)}),
     "at $.data.req_data[0].input_9: the api's request schema has no field 'input_9'"),
    (_tabular_rule({"input_1": _leaf("object", index=0)}),
     "at $.data.req_data[0].input_1: object here, but the api's request schema declares number"),
    (_tabular_rule({"input_1": _leaf(), "input_2": _leaf(index=-1)}), "maps no CSV column"),
    ({"type": "object", "properties": {"data": {"type": "object", "index": 0}}},
     "at $.data: an index on an object"),
    (_tabular_rule({"input_1": _leaf(index="0")}), 'at $.data.req_data[0].input_1: index "0" is not an integer'),
    ([1, 2], "want a JSON object"),
])
def test_bad_rules_are_refused_naming_the_path(tmp_path: Path, rule: object, reason: str) -> None:
    rule_path = _write(tmp_path / "rule.json", json.dumps(rule))
    src = _write(tmp_path / "in" / "rows.csv", DOC_CSV)
    dest = tmp_path / "out"
    done = run_batch("http://127.0.0.1:9", "--config", str(TABULAR), "--src-path", str(src.parent),
                     "--dest-path", str(dest), "--mapping-type", "csv", "--mapping-rule", str(rule_path))
    assert done.returncode == 2, done.stderr
    assert reason in done.stderr
    assert not dest.exists()


def test_csv_mapping_needs_a_rule(tmp_path: Path) -> None:
    done = run_batch("http://127.0.0.1:9", "--config", str(TABULAR), "--src-path", str(tmp_path),
                     "--dest-path", str(tmp_path / "out"), "--mapping-type", "csv")
    assert done.returncode == 2
    assert "--mapping-rule" in done.stderr and "maserve batch mapping-rule" in done.stderr


def test_tabular_example_answers_its_sample_within_its_schema(tmp_path: Path) -> None:
    from helpers import assert_matches_response_schema, request

    server = start_server(tmp_path, TABULAR, env={"MASERVE_VALIDATE_RESPONSES": "1"})
    try:
        conn = server.connect()
        reply = request(conn, "POST", "/", (TABULAR / "samples" / "request.json").read_bytes(),
                        {"Content-Type": "application/json"})
        bad = request(conn, "POST", "/", json.dumps({"data": {"req_data": [{"input_1": 5.1}]}}).encode(),
                      {"Content-Type": "application/json"})
        conn.close()
    finally:
        server.stop()
    assert reply.status == 200, reply.body
    assert reply.json() == json.loads((TABULAR / "samples" / "expected.json").read_text())["request.json"]
    assert_matches_response_schema(TABULAR / "config.json", "/", reply.body)
    assert bad.status == 400 and "input_2" in bad.json()["error_msg"]
