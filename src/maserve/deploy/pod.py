"""What every pod that runs the image needs, derived once from config.json and maserve's settings.

`plan()` reads the model's config.json and the MASERVE_* values the manifests will set, checks
them with the same rules the server applies at start (so a manifest never ships a setting the
image would refuse), and returns a `Plan`; the `*_spec` functions turn it into plain dicts
(JSON-compatible, so they dump as YAML and validate as JSON) shared by the Deployment, the batch
Job and the KServe predictor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maserve import __version__
from maserve.config import ConfigError, ModelConfig, load_config
from maserve.settings import PLATFORM_MODEL_DIR, Settings, SettingsError

# The image (src/maserve/image/Dockerfile): `USER 1000:100`, ma-user in ma-group, as ModelArts runs it.
RUN_AS_USER = 1000
RUN_AS_GROUP = 100
# After grace + drain the master still has to reap its workers and exit: `maserve check` measured
# 61.8 s for a 60 s grace with nothing in flight. 6 s covers that and the kubelet's own signalling.
STOP_MARGIN_SECONDS = 6
# Readiness takes a pod out of the Service after this many failed probes; liveness (a restart, which
# costs a model load) waits for at least twice as many, and never fewer than config.json's threshold.
READINESS_FAILURES = 3
# ModelArts' console defaults, used for whatever config.json's `health` block leaves out.
HEALTH_DEFAULTS = {"initial_delay_seconds": 12, "timeout_seconds": 5, "period_seconds": 5, "failure_threshold": 12}
# Settings whose file paths live inside the container: not checked for existence on this machine.
_CONTAINER_PATHS = ("MASERVE_TLS_CERT", "MASERVE_TLS_KEY", "MASERVE_MODEL_DIR")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


class DeployError(ValueError):
    """The flags or the model cannot make a manifest the image would run with."""


@dataclass(frozen=True)
class Options:
    """What `maserve deploy k8s` was asked for (the CLI flags)."""

    model_dir: Path
    image: str
    name: str | None = None
    namespace: str = "default"
    replicas: int = 2
    max_replicas: int | None = None
    cpu: str = "2"
    memory: str = "2Gi"
    cpu_target: int = 70
    env: tuple[str, ...] = ()
    kserve: bool = False
    shards: int = 4
    src_path: str = "/data/input"
    dest_path: str = "/data/output"
    task_id: str | None = None


@dataclass(frozen=True)
class Health:
    """config.json's `health` block with ModelArts' defaults filled in (strings of digits accepted)."""

    url: str
    initial_delay: int
    timeout: int
    period: int
    failure_threshold: int
    command: tuple[str, ...] | None = None  # check_method EXEC

    @property
    def startup_budget(self) -> int:
        """Seconds a model may take to load before the pod is restarted. ModelArts allows the delay
        plus `failure_threshold` periods; `initial_delay × failure_threshold` is the more generous
        reading for models whose delay was measured, so the longer of the two wins."""
        return max(self.initial_delay * self.failure_threshold,
                   self.initial_delay + self.period * self.failure_threshold)


@dataclass(frozen=True)
class Plan:
    """Everything the manifests are made from, checked."""

    options: Options
    config: ModelConfig
    settings: Settings
    health: Health
    name: str
    version: str
    workers: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        """config.json's apis use https/wss: the server speaks TLS on its port, so must the probes."""
        return self.config.uses_tls

    @property
    def port_name(self) -> str:
        return "https" if self.tls else "http"

    @property
    def scheme(self) -> str:
        return "HTTPS" if self.tls else "HTTP"

    @property
    def metrics_path(self) -> str:
        """MASERVE_METRICS_PATH: where maserve serves Prometheus text ("" turns metrics off)."""
        return self.settings.metrics_path

    @property
    def termination_grace(self) -> int:
        return termination_grace(self.settings.grace_seconds, self.settings.drain_seconds)

    def labels(self, component: str) -> dict[str, str]:
        """The recommended labels; `component` keeps the Service's selector off the batch Job's pods."""
        return {**self.selector(component), "app.kubernetes.io/version": self.version,
                "app.kubernetes.io/managed-by": "maserve"}

    def selector(self, component: str) -> dict[str, str]:
        """Labels that never change for the life of the app (a Deployment's selector is immutable)."""
        return {"app.kubernetes.io/name": self.name, "app.kubernetes.io/instance": self.name,
                "app.kubernetes.io/component": component}

    def metadata(self, name: str, component: str) -> dict[str, Any]:
        return {"name": name, "namespace": self.options.namespace, "labels": self.labels(component)}


def termination_grace(grace: float, drain: float) -> int:
    """SIGTERM to SIGKILL: maserve serves for `grace`, drains for up to `drain`, then exits."""
    return math.ceil(grace + drain) + STOP_MARGIN_SECONDS


def plan(options: Options) -> Plan:
    """Load and check everything; raise DeployError with the reason when a manifest can't be made."""
    path = options.model_dir / "config.json" if options.model_dir.is_dir() else options.model_dir
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise DeployError(str(exc)) from None
    _check_options(options)
    user_env = _parse_env(options.env)
    # Written out even where they equal the image's defaults: the probes, the stop budget and the
    # scrape annotations are computed from these values, so the pod must not depend on another default.
    env = {"MASERVE_PORT": "8080", "MASERVE_WORKERS": str(workers_for(options.cpu)), "MASERVE_GRACE_SECONDS": "60",
           "MASERVE_DRAIN_SECONDS": "29", "MASERVE_METRICS_PATH": "/metrics", "MASERVE_LOG_FORMAT": "json",
           **user_env}
    if ("MASERVE_TLS_CERT" in env) != ("MASERVE_TLS_KEY" in env):
        raise DeployError("--env: MASERVE_TLS_CERT and MASERVE_TLS_KEY must be given together")
    checked = {k: v for k, v in env.items() if k not in _CONTAINER_PATHS}
    try:
        settings = Settings.load(env=checked, overrides={"model_dir": PLATFORM_MODEL_DIR})
    except SettingsError as exc:
        raise DeployError(f"--env: {exc}") from None
    taken = {api.url for api in config.apis} | {config.health_url}
    if settings.metrics_path and settings.metrics_path in taken:
        raise DeployError(f"MASERVE_METRICS_PATH {settings.metrics_path} is also a path of config.json: "
                          "the server would refuse to start; pick another (or empty: no metrics)")
    return Plan(options=options, config=config, settings=settings, health=read_health(config.raw),
                name=options.name or dns_name(options.model_dir.resolve().name),
                version=image_version(options.image), workers=settings.workers, env=env)


def _check_options(options: Options) -> None:
    if options.name is not None and not (_DNS_LABEL.fullmatch(options.name) and len(options.name) <= 52):
        raise DeployError(f"--name {options.name!r}: lower-case letters, digits and '-', at most 52 characters")
    if not (_DNS_LABEL.fullmatch(options.namespace) and len(options.namespace) <= 63):
        raise DeployError(f"--namespace {options.namespace!r}: not a valid namespace name")
    for flag, value in (("--cpu", options.cpu), ("--memory", options.memory)):
        if not _QUANTITY.fullmatch(value):
            raise DeployError(f"{flag} {value!r}: a Kubernetes quantity, e.g. 2, 500m, 2Gi")
    if options.replicas < 1 or (options.max_replicas is not None and options.max_replicas < options.replicas):
        raise DeployError("--replicas must be at least 1 and --max-replicas at least --replicas")
    if not 1 <= options.cpu_target <= 100:
        raise DeployError("--cpu-target: a percentage of the CPU request, 1-100")
    if not 1 <= options.shards <= 10000:
        raise DeployError("--shards: 1 to 10000")
    for flag, value in (("--src-path", options.src_path), ("--dest-path", options.dest_path)):
        if not value.startswith("/"):
            raise DeployError(f"{flag} {value!r}: an absolute path inside the container")
    if not options.image.strip() or any(c.isspace() for c in options.image):
        raise DeployError(f"--image {options.image!r}: an image reference, e.g. registry/maserve-mnist:1.0")


def _parse_env(items: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise DeployError(f"--env {item!r}: want KEY=VALUE")
        env[key] = value
    return env


def workers_for(cpu: str) -> int:
    """One worker per whole core of the CPU limit. The server's own default counts the cores it can
    be scheduled on, which in a pod is the node's, not the quota: dozens of workers on 2 CPUs would
    each load the model and be throttled."""
    text = cpu.strip()
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.floor(cores))


def read_health(raw: dict[str, Any]) -> Health:
    """The probe parameters ModelArts would use for this config.json."""
    block = raw.get("health") or {}
    values = {key: int(block.get(key, default)) for key, default in HEALTH_DEFAULTS.items()}
    command = None
    if block.get("check_method") == "EXEC":
        given = block["command"]
        command = ("sh", "-c", given) if isinstance(given, str) else tuple(str(c) for c in given)
    return Health(url=block.get("url", "/health"), initial_delay=values["initial_delay_seconds"],
                  timeout=values["timeout_seconds"], period=values["period_seconds"],
                  failure_threshold=values["failure_threshold"], command=command)


def dns_name(text: str) -> str:
    """A DNS-1123 label from a directory name (examples/my_model → my-model)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:52].strip("-")
    if not name:
        raise DeployError(f"cannot make a name from {text!r}: give --name")
    return name


def image_version(image: str) -> str:
    """The `app.kubernetes.io/version` label: the image's tag (or digest), else maserve's version."""
    ref = image.rsplit("/", 1)[-1]
    if "@" in ref:
        value = ref.split("@", 1)[1].replace(":", "-")[:19]
    elif ":" in ref:
        value = ref.rsplit(":", 1)[1]
    else:
        value = "latest"
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:63].strip("-_.")
    return value if _LABEL_VALUE.fullmatch(value or "-") else __version__


# -- the pod-level pieces ------------------------------------------------------------------------
def probe_action(plan: Plan) -> dict[str, Any]:
    """GET health.url on the server's own port and protocol (an HTTP probe of a TLS port fails), or
    config.json's EXEC command."""
    if plan.health.command is not None:
        return {"exec": {"command": list(plan.health.command)}}
    return {"httpGet": {"path": plan.health.url, "port": plan.port_name, "scheme": plan.scheme}}


def probes(plan: Plan) -> dict[str, dict[str, Any]]:
    """startup, readiness and liveness probes from config.json's `health` block.

    - startup: polls from the first second (a fast model is Ready at once) and allows the whole
      startup budget, so a slow model load is never killed by liveness;
    - readiness: takes the pod out of the Service after READINESS_FAILURES failed periods;
    - liveness: restarts only after at least twice as long (and never sooner than ModelArts would):
      a restart costs a model load, and maserve answers health even when overloaded.
    """
    h = plan.health
    readiness_failures = max(1, min(READINESS_FAILURES, h.failure_threshold))

    def probe(**extra: int) -> dict[str, Any]:
        return {**probe_action(plan), "periodSeconds": h.period, "timeoutSeconds": h.timeout, **extra,
                "successThreshold": 1}

    return {
        "startupProbe": probe(initialDelaySeconds=0, failureThreshold=math.ceil(h.startup_budget / h.period)),
        "readinessProbe": probe(failureThreshold=readiness_failures),
        "livenessProbe": probe(failureThreshold=max(h.failure_threshold, 2 * readiness_failures)),
    }


def pod_security_context() -> dict[str, Any]:
    """The image's own user; fsGroup makes mounted volumes writable by ma-group. Restricted PSS."""
    return {"runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_GROUP, "runAsNonRoot": True,
            "fsGroup": RUN_AS_GROUP, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    """Nothing in maserve needs root, a capability or a writable image: it writes only to /tmp
    (gunicorn's heartbeat files, a self-signed certificate), an emptyDir."""
    return {"runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_GROUP, "runAsNonRoot": True,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}


def resources(options: Options) -> dict[str, Any]:
    """requests = limits: Guaranteed QoS (evicted last, no noisy neighbour), and the CPU the workers
    were counted for is the CPU the pod gets."""
    amounts = {"cpu": options.cpu, "memory": options.memory}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def env_list(env: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": key, "value": value} for key, value in env.items()]


def tmp_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """The one writable place under a read-only root filesystem: /tmp."""
    return ({"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}, {"name": "tmp", "mountPath": "/tmp"})


def server_container(plan: Plan, name: str = "maserve") -> dict[str, Any]:
    """The serving container: the image's own CMD (sh /home/run.sh), so what ModelArts runs runs."""
    _, mount = tmp_volume()
    return {
        "name": name,
        "image": plan.options.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": plan.port_name, "containerPort": plan.settings.port, "protocol": "TCP"}],
        "env": env_list(plan.env),
        "resources": resources(plan.options),
        **probes(plan),
        "securityContext": container_security_context(),
        "volumeMounts": [mount],
    }


def pod_basics(plan: Plan, grace: int) -> dict[str, Any]:
    """Pod fields every workload shares. No service-account token (the server calls no API) and no
    service links: a Service named `maserve` would otherwise inject MASERVE_PORT=tcp://..."""
    volume, _ = tmp_volume()
    return {"automountServiceAccountToken": False, "enableServiceLinks": False,
            "terminationGracePeriodSeconds": grace, "securityContext": pod_security_context(),
            "volumes": [volume]}


def scrape_annotations(plan: Plan) -> dict[str, str]:
    """The prometheus.io convention most scrape configs (and the Prometheus adapter) follow; none
    when MASERVE_METRICS_PATH is empty (metrics off), so nothing scrapes a 404."""
    if not plan.metrics_path:
        return {}
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(plan.settings.port),
            "prometheus.io/path": plan.metrics_path, "prometheus.io/scheme": plan.scheme.lower()}
