"""`maserve deploy k8s MODEL_DIR --image IMAGE ...`: write the manifests, print what was written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maserve.deploy.pod import DeployError, Options


def add_parser(commands: argparse._SubParsersAction) -> None:
    deploy = commands.add_parser("deploy", help="write manifests to run the image elsewhere (Kubernetes)")
    targets = deploy.add_subparsers(dest="deploy_target", required=True)
    k8s = targets.add_parser(
        "k8s", help="Kubernetes manifests (Deployment, Service, PDB, HPA or KServe; an Indexed batch Job)",
        description="Write Kubernetes manifests for MODEL_DIR's image: probes from config.json's health block, "
                    "a stop budget from maserve's grace and drain, the image's own uid, a kustomization.")
    k8s.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="the model directory (its config.json)")
    k8s.add_argument("--image", required=True, metavar="IMAGE", help="the image `maserve build` made, in a registry")
    k8s.add_argument("--name", metavar="NAME", help="object names and app.kubernetes.io/name [MODEL_DIR's name]")
    k8s.add_argument("--namespace", "-n", default="default", metavar="NS", help="[default]")
    k8s.add_argument("--replicas", type=int, default=2, metavar="N", help="the HPA's minimum [2]")
    k8s.add_argument("--max-replicas", type=int, metavar="N", help="the HPA's maximum [3 × --replicas]")
    k8s.add_argument("--cpu", default="2", metavar="Q", help="CPU request = limit; one worker per core [2]")
    k8s.add_argument("--memory", default="2Gi", metavar="Q", help="memory request = limit [2Gi]")
    k8s.add_argument("--cpu-target", type=int, default=70, metavar="PCT", help="the HPA's CPU utilisation [70]")
    k8s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="container env (repeatable), e.g. MASERVE_GRACE_SECONDS=30: checked as the server "
                          "checks it, and the probes and stop budget follow it")
    k8s.add_argument("--kserve", action="store_true",
                     help="a KServe InferenceService instead of Deployment, Service, PDB and HPA")
    k8s.add_argument("--shards", type=int, default=4, metavar="N", help="batch Job: pods, one shard each [4]")
    k8s.add_argument("--src-path", default="/data/input", metavar="PATH",
                     help="batch Job: input folder or .manifest, on the input claim [/data/input]")
    k8s.add_argument("--dest-path", default="/data/output", metavar="PATH",
                     help="batch Job: output folder, on the output claim [/data/output]")
    k8s.add_argument("--task-id", metavar="ID", help="batch Job: names infer-result-<ID> [<NAME>-batch]")
    k8s.add_argument("-o", "--output", type=Path, default=Path("k8s"), metavar="DIR", help="[./k8s]")


def main(args: argparse.Namespace) -> int:
    from maserve.deploy.k8s import write_manifests
    from maserve.deploy.pod import plan

    options = Options(
        model_dir=args.model_dir, image=args.image, name=args.name, namespace=args.namespace,
        replicas=args.replicas, max_replicas=args.max_replicas, cpu=args.cpu, memory=args.memory,
        cpu_target=args.cpu_target, env=tuple(args.env), kserve=args.kserve, shards=args.shards,
        src_path=args.src_path, dest_path=args.dest_path, task_id=args.task_id,
    )
    try:
        p = plan(options)
    except DeployError as exc:
        print(f"maserve deploy k8s: {exc}", file=sys.stderr)
        return 2
    for warning in p.config.warnings:
        print(f"maserve deploy k8s: warning: {warning.path}: {warning.message}", file=sys.stderr)
    written, removed = write_manifests(p, args.output)
    for path in removed:
        print(f"removed {path} (not part of this variant)")
    for path in written:
        print(f"wrote {path}")
    h = p.health
    print(f"probes: GET {h.url} ({p.scheme}) every {h.period} s; startup allowed {h.startup_budget} s; "
          f"stop budget {p.termination_grace} s (grace {p.settings.grace_seconds:g} + drain "
          f"{p.settings.drain_seconds:g} + margin); {p.workers} worker(s) for --cpu {options.cpu}")
    print(f"serve:  kubectl apply -k {args.output}")
    print(f"batch:  create the claims {p.name}-batch-input and {p.name}-batch-output, then "
          f"kubectl apply -k {args.output / 'batch'}")
    return 0
