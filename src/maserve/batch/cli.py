"""`maserve batch ...` and `maserve batch mapping-rule MODEL_DIR`: flags named after the platform's
batch service fields (src_path, dest_path, req_uri, mapping_type, mapping_rule; both `--src-path`
and `--src_path` spellings are taken), targets as in `maserve check`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from maserve.batch import DEFAULT_CONCURRENCY, START_TIMEOUT, STOP_TIMEOUT
from maserve.batch.inputs import UsageError
from maserve.batch.output import LINES_PER_MANIFEST, Shard
from maserve.config import ConfigError, load_config

if TYPE_CHECKING:
    from maserve.batch.job import JobOptions

# maserve.batch.job (the targets, the event loop) is imported only when a batch runs: every other
# `maserve` command, `serve` included, builds this parser.


def add_parser(commands: argparse._SubParsersAction) -> None:
    batch = commands.add_parser(
        "batch", help="run a ModelArts batch service locally: inputs → requests → infer-result-<task>/ + manifest",
        description="Do what ModelArts does with a batch service, against a running URL, a command or an image. "
                    "`maserve batch mapping-rule MODEL_DIR [--req-uri /]` prints a csv mapping rule to fill in.")
    batch.add_argument("urls", nargs="*", metavar="URL", help="running service(s); several spread the run")
    batch.add_argument("--config", "--model-dir", required=True, type=Path, metavar="MODEL_DIR",
                       help="config.json or the model directory")
    batch.add_argument("--src-path", "--src_path", required=True, type=Path, metavar="INPUT",
                       help="a directory (every file in it) or a .manifest file")
    batch.add_argument("--dest-path", "--dest_path", required=True, type=Path, metavar="OUTPUT",
                       help="an empty or missing directory (any with --resume)")
    batch.add_argument("--req-uri", "--req_uri", default="/", metavar="URL", help="the apis[].url to call [/]")
    batch.add_argument("--mapping-type", "--mapping_type", choices=("file", "csv"), default="file",
                       help="one request per file, or per CSV row [file]")
    batch.add_argument("--mapping-rule", "--mapping_rule", type=Path, metavar="RULE.json",
                       help="csv: the request schema with an index per leaf (`maserve batch mapping-rule`)")
    batch.add_argument("--cmd", metavar="COMMAND", help='start the service with sh -c COMMAND, e.g. "sh image/run.sh"')
    batch.add_argument("--cwd", type=Path, metavar="DIR", help="working directory of --cmd")
    batch.add_argument("--image", metavar="IMAGE", help="run IMAGE with podman/docker (removed afterwards)")
    batch.add_argument("--engine", choices=("podman", "docker"), help="--image: [docker if `docker info` works]")
    batch.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="--image: container env")
    batch.add_argument("--port", type=int, default=8080, metavar="P", help="--cmd/--image: the service's port [8080]")
    batch.add_argument("--https", action="store_true", help="talk TLS (also when config.json says https)")
    batch.add_argument("--concurrency", type=int, metavar="N",
                       help=f"requests in flight [{DEFAULT_CONCURRENCY} per URL]")
    batch.add_argument("--timeout", type=float, default=60.0, metavar="S", help="per request [60]")
    batch.add_argument("--resume", action="store_true", help="carry on in --dest-path: skip SUCCESSFUL inputs")
    batch.add_argument("--shard", metavar="K/N", help="only the K-th of N shares of the inputs (K from 0)")
    batch.add_argument("--task-id", metavar="ID", help="names infer-result-<ID> [new, or the one found on --resume]")
    batch.add_argument("--source-root", type=Path, metavar="DIR",
                       help="read obs://BUCKET/KEY and s3://BUCKET/KEY manifest sources from DIR/BUCKET/KEY")
    batch.add_argument("--csv-header", action="store_true", help="csv: the first row is a header, not data")
    batch.add_argument("--start-timeout", type=float, default=START_TIMEOUT, metavar="S",
                       help=f"--cmd/--image: wait this long for health [{START_TIMEOUT:g}, the platform's]")
    batch.add_argument("--stop-timeout", type=float, default=STOP_TIMEOUT, metavar="S",
                       help=f"--cmd/--image: SIGKILL this long after SIGTERM [{STOP_TIMEOUT:g}]")
    batch.add_argument("--manifest-lines", type=int, default=LINES_PER_MANIFEST, metavar="N",
                       help=f"split the manifest past N lines [{LINES_PER_MANIFEST}]")


def main(args: argparse.Namespace) -> int:
    from maserve.batch.job import run_job

    try:
        options = _options(args)
    except UsageError as exc:
        print(f"maserve batch: {exc}", file=sys.stderr)
        return 2
    # SIGTERM ends the run through `finally`: the started service is stopped, the manifest closed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return run_job(options)


def _options(args: argparse.Namespace) -> "JobOptions":
    from maserve.batch.job import JobOptions

    if sum(bool(x) for x in (args.urls, args.cmd, args.image)) != 1:
        raise UsageError("give the service as URL (one or more), --cmd COMMAND or --image IMAGE (one of them)")
    if args.image is None and (args.env or args.engine):
        raise UsageError("--env and --engine go with --image")
    if any("=" not in item or item.startswith("=") for item in args.env):
        raise UsageError("--env takes KEY=VALUE")
    if args.cwd is not None and not args.cwd.is_dir():
        raise UsageError(f"--cwd {args.cwd}: not a directory")
    if not args.config.exists():
        raise UsageError(f"--config {args.config}: not found")
    if args.concurrency is not None and not 1 <= args.concurrency <= 1024:
        raise UsageError("--concurrency: 1 to 1024")
    if min(args.timeout, args.start_timeout, args.stop_timeout) <= 0 or args.manifest_lines < 1:
        raise UsageError("--timeout, --start-timeout, --stop-timeout and --manifest-lines must be positive")
    if not 0 < args.port < 65536:
        raise UsageError("--port: 1 to 65535")
    return JobOptions(
        config=args.config, src_path=args.src_path, dest_path=args.dest_path, req_uri=args.req_uri,
        mapping_type=args.mapping_type, mapping_rule=args.mapping_rule, urls=tuple(args.urls), cmd=args.cmd,
        cwd=args.cwd, image=args.image, engine=args.engine, env=tuple(args.env), port=args.port, https=args.https,
        concurrency=args.concurrency, timeout=args.timeout, resume=args.resume,
        shard=Shard.parse(args.shard) if args.shard else None, task_id=args.task_id,
        source_root=args.source_root, csv_header=args.csv_header, start_timeout=args.start_timeout,
        stop_timeout=args.stop_timeout, lines_per_manifest=args.manifest_lines,
    )


def mapping_rule(argv: list[str]) -> int:
    """Print the csv mapping rule template of an api: its request schema, leaves numbered 0, 1, ..."""
    parser = argparse.ArgumentParser(prog="maserve batch mapping-rule",
                                     description="print the api's request schema with an index on each leaf")
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="config.json or the model directory")
    parser.add_argument("--req-uri", "--req_uri", default="/", metavar="URL", help="the apis[].url [/]")
    args = parser.parse_args(argv)
    from maserve.batch.job import find_api
    from maserve.batch.mapping import template

    path = args.model_dir / "config.json" if args.model_dir.is_dir() else args.model_dir
    try:
        api = find_api(load_config(path), args.req_uri)
    except (ConfigError, UsageError) as exc:
        print(f"maserve batch mapping-rule: {exc}", file=sys.stderr)
        return 2
    rule, leaves = template(api)
    print(json.dumps(rule, indent=2, ensure_ascii=False))
    if leaves:
        print(f"maserve batch mapping-rule: {leaves} field(s) numbered 0-{leaves - 1} in schema order: set each "
              "index to its CSV column (0-based), -1 to leave a field out", file=sys.stderr)
    else:
        print("maserve batch mapping-rule: the request schema declares no string/number/integer/boolean field: "
              'add them (e.g. "input_1": {"type": "number", "index": 0}) where the api expects them', file=sys.stderr)
    return 0
