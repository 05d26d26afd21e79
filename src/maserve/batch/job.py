"""One batch run, as the platform does it: check everything that can be checked before a request
is sent (the api, the mapping, the inputs, the destination), start the service (a command or an
image) and wait for its health check, send the work, stop the service with SIGTERM, report.

Exit status: 0 when every input succeeded, 1 when any failed (or the service never became
healthy), 2 on a usage error (nothing sent, nothing written).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from maserve.batch import DEFAULT_CONCURRENCY, START_TIMEOUT, STOP_TIMEOUT, mapping
from maserve.batch.inputs import Input, UsageError, list_inputs
from maserve.batch.output import LINES_PER_MANIFEST, Output, Shard, prepare
from maserve.batch.runner import Counters, run
from maserve.batch.work import csv_work, file_work
from maserve.check import image as image_target
from maserve.check import result as check_result
from maserve.check.client import Endpoint
from maserve.check.service import URL_HEALTH_WAIT, wait_healthy
from maserve.check.target import Options, Target, from_url, start_command
from maserve.config import ApiSpec, ConfigError, ModelConfig, load_config



@dataclass(frozen=True)
class JobOptions:
    config: Path
    src_path: Path
    dest_path: Path
    req_uri: str = "/"
    mapping_type: str = "file"
    mapping_rule: Path | None = None
    urls: tuple[str, ...] = ()
    cmd: str | None = None
    cwd: Path | None = None
    image: str | None = None
    engine: str | None = None
    env: tuple[str, ...] = ()
    port: int = 8080
    https: bool = False
    concurrency: int | None = None
    timeout: float = 60.0
    resume: bool = False
    shard: Shard | None = None
    task_id: str | None = None
    source_root: Path | None = None
    csv_header: bool = False
    start_timeout: float = START_TIMEOUT
    stop_timeout: float = STOP_TIMEOUT
    lines_per_manifest: int = LINES_PER_MANIFEST


@dataclass
class Plan:
    """What was settled before anything ran."""

    config: ModelConfig
    api: ApiSpec
    inputs: list[Input]  # this shard's, not yet done
    skipped: int  # done by an earlier run (--resume)
    output: Output
    file_field: str = ""
    rule: mapping.Rule | None = None
    notes: list[str] = field(default_factory=list)


def say(message: str) -> None:
    print(f"maserve batch: {message}", file=sys.stderr, flush=True)


def plan(options: JobOptions) -> Plan:
    """Everything checked up front; UsageError says what is wrong."""
    config_path = options.config / "config.json" if options.config.is_dir() else options.config
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    api = find_api(config, options.req_uri)
    field_name, rule, notes = "", None, []
    if options.mapping_type == "file":
        if options.mapping_rule is not None:
            raise UsageError("--mapping-rule goes with --mapping-type csv")
        field_name = mapping.file_field(api)
    else:
        mapping.check_csv_api(api)
        if options.mapping_rule is None:
            raise UsageError("--mapping-type csv needs --mapping-rule RULE.json (print a template with "
                             f"`maserve batch mapping-rule {options.config} --req-uri {options.req_uri}`)")
        rule = mapping.compile_rule(read_rule(options.mapping_rule), api)
        notes += [f"mapping rule: {path} has no index: left out of every request" for path in rule.unmapped]
    if options.src_path.is_dir() and options.dest_path.absolute().resolve().is_relative_to(
            options.src_path.absolute().resolve()):
        raise UsageError(f"--dest-path {options.dest_path} is inside --src-path {options.src_path}: the results "
                         "would become inputs (the platform needs separate folders too)")
    inputs = list_inputs(options.src_path, options.source_root)
    if options.shard is not None:
        inputs = options.shard.take(inputs)
    output, done = prepare(options.dest_path, options.task_id, options.shard, options.resume, len(inputs),
                           options.lines_per_manifest)
    todo = [item for item in inputs if output.result_path(item.name) not in done]
    return Plan(config, api, todo, len(inputs) - len(todo), output, field_name, rule, notes)


def find_api(config: ModelConfig, url: str) -> ApiSpec:
    matches = [api for api in config.apis if api.url == url]
    if not matches:
        listed = ", ".join(mapping.route(api) for api in config.apis) or "none"
        raise UsageError(f"--req-uri {url}: config.json declares no api at that url (its apis: {listed})")
    return next((api for api in matches if api.method == "POST"), matches[0])


def read_rule(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--mapping-rule {path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"--mapping-rule {path}: not readable JSON: {exc}") from None


def run_job(options: JobOptions) -> int:
    check_result.PROGRESS_PREFIX = "maserve batch"
    try:
        job = plan(options)
    except UsageError as exc:
        print(f"maserve batch: {exc}", file=sys.stderr)
        return 2
    for note in job.notes:
        say(note)
    https = options.https or job.config.uses_tls
    target, endpoints, summary = None, [], ""
    try:
        if options.urls:
            endpoints = [from_url(url, https).endpoint for url in options.urls]
            for endpoint in endpoints:
                if not _healthy(Target(endpoint, endpoint.port), job.config.health_url, URL_HEALTH_WAIT):
                    return 1
        else:
            target = _start(options, https)
            if not _healthy(target, job.config.health_url, options.start_timeout):
                return 1
            endpoints = [target.endpoint]
        code, summary = _send(options, job, endpoints)
    finally:
        job.output.close()
        if target is not None:
            _stop(target, options.stop_timeout)
    print(summary, flush=True)  # last, after the service's exit: the run's outcome on stdout
    return code


def _start(options: JobOptions, https: bool) -> Target:
    check_options = Options(cmd=options.cmd, cwd=options.cwd, port=options.port, https=https, image=options.image,
                            engine=options.engine, env=options.env)
    if options.image is not None:
        return image_target.start_image(check_options, options.engine or image_target.default_engine())
    say(f"starting: {options.cmd}")
    return start_command(check_options)


def _healthy(target: Target, health_url: str, limit: float) -> bool:
    result, ok = wait_healthy(target, health_url, limit, None)
    if not ok:
        tail = target.tail(8) if target.proc is not None else ""
        say(f"the service is not healthy: {result.evidence}" + (f"; its last output: {tail}" if tail else ""))
    return ok


def _stop(target: Target, bound: float) -> None:
    """SIGTERM, as the platform stops a finished batch service; its exit status is reported."""
    assert target.proc is not None
    started = time.monotonic()
    try:
        if target.proc.poll() is None:
            say(f"stopping the service (SIGTERM; it may serve out its grace period, {bound:g} s at most)")
            target.terminate()
            try:
                target.proc.wait(timeout=bound)
            except subprocess.TimeoutExpired:
                say(f"the service did not exit within {bound:g} s of SIGTERM: killed")
        code = target.exit_code()
        say(f"service exited with status {code} {time.monotonic() - started:.1f} s after SIGTERM")
    except (OSError, image_target.EngineError) as exc:
        say(f"could not stop the service cleanly: {exc}")
    finally:
        target.cleanup()


def _send(options: JobOptions, job: Plan, endpoints: list[Endpoint]) -> tuple[int, str]:
    """Run the work with a progress bar; the exit status and the summary."""
    from tqdm import tqdm  # noqa: F401 - imported before the clock starts


    counters = Counters(total=len(job.inputs))
    if job.rule is not None:
        work = csv_work(job.inputs, job.api, job.rule, options.csv_header, job.output, counters)
        unit = "row"
    else:
        work = file_work(job.inputs, job.file_field, job.output, counters)
        unit = "file"
    concurrency = options.concurrency or DEFAULT_CONCURRENCY * len(endpoints)
    if job.skipped:
        say(f"--resume: {job.skipped} input(s) already SUCCESSFUL in {job.output.dest}, not sent again")
    say(f"{len(job.inputs)} input(s) → {mapping.route(job.api)} on {', '.join(f'{e.host}:{e.port}' for e in endpoints)}"
        f", {concurrency} at a time")
    started = time.monotonic()
    stop = threading.Event()
    bar = threading.Thread(target=_progress, args=(counters, unit, stop), daemon=True)
    bar.start()
    try:
        run(work, endpoints, job.api.method, job.api.url, concurrency, options.timeout, counters)
    finally:
        stop.set()
        bar.join(timeout=5)
    elapsed = time.monotonic() - started
    return (1 if job.output.failed_lines else 0), _summary(job, counters, elapsed)


def _progress(counters: Counters, unit: str, stop: threading.Event) -> None:
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    with tqdm(total=counters.total, unit=unit, file=sys.stderr, dynamic_ncols=True, smoothing=0,
              mininterval=0.2 if interactive else 5.0, desc="maserve batch") as bar:
        while True:
            finished = stop.wait(0.25)
            with counters.lock:
                done, failed, total, retries = counters.done, counters.failed, counters.total, counters.retries
            bar.total = max(total, done)
            bar.set_postfix(failed=failed, retries=retries, refresh=False)
            bar.update(done - bar.n)
            if finished:
                break


def _summary(job: Plan, counters: Counters, elapsed: float) -> str:
    output = job.output
    rate = counters.done / elapsed if elapsed > 0 else 0.0
    lines = [
        f"maserve batch: {output.successful_lines} input(s) SUCCESSFUL, {output.failed_lines} FAILED"
        + (f", {job.skipped} done before (--resume)" if job.skipped else ""),
        f"  {counters.done} request(s) in {elapsed:.2f} s ({rate:.1f}/s), {counters.retries} retried",
        f"  manifest: {', '.join(str(p) for p in output.manifests()) or '(none written)'}",
        f"  results:  {output.results_dir}{os.sep}",
    ]
    return "\n".join(lines)
