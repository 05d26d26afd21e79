"""`maserve deploy`: manifests for running the same image outside ModelArts.

The image already keeps ModelArts' promises (port 8080, health, a 60 s grace period plus a drain
after SIGTERM, uid 1000:100, logs on stdout). On another orchestrator those promises only hold if
its manifests are derived from the same facts: config.json's `health` block and maserve's settings.
`maserve.deploy.pod` turns them into the pod-level parts (probes, stop budget, security, env,
resources); `maserve.deploy.k8s` into Kubernetes objects; `maserve.deploy.cli` is the command.
"""

from __future__ import annotations

from typing import Any

from maserve.deploy.pod import DeployError, Options, Plan, plan

__all__ = ["DeployError", "Options", "Plan", "manifests", "plan", "write_manifests"]


def __getattr__(name: str) -> Any:
    # maserve.deploy.k8s (and PyYAML) load only when manifests are made: every `maserve` command,
    # `serve` included, builds the CLI parser that imports this package.
    if name in ("manifests", "write_manifests"):
        from maserve.deploy import k8s

        return getattr(k8s, name)
    raise AttributeError(name)
