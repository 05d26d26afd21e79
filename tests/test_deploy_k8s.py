"""`maserve deploy k8s`: the manifests are valid Kubernetes and keep the image's promises.

(a) every generated object (plain and --kserve, examples/mnist and examples/chat) validates, in
kubernetes-validate's strict mode (unknown fields refused), against the two newest Kubernetes
versions it ships. KServe's InferenceService is a CRD it has no schema for: its metadata and the
PodSpec fields its predictor inlines are validated as a v1 Pod, its container as a v1 Container,
and its own fields (replicas, scaling) are checked by name and type here.
(b) probe values, the stop budget, the security context, env and the Job's sharding are asserted on
the dicts; the Job's shell command is run with a stub `maserve` for every index, its arguments are
parsed by maserve's own batch parser, and the shards partition the inputs exactly.
(c) with podman and the MNIST image (MASERVE_TEST_IMAGE, default maserve-mnist:check, as in
tests/test_check_image.py): `podman kube play` of the generated Deployment serves the model, its
health passes, and `podman kube down` stops it within grace + drain with no failed request under a
light load. Skipped with the reason when podman or the image is missing.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import MASERVE_BIN, MNIST_DIR, ROOT, free_port

from maserve.batch.output import TASK_ID, Shard
from maserve.cli import _parser, main
from maserve.deploy import DeployError, Options, manifests, plan
from maserve.deploy.k8s import batch_script
from maserve.deploy.pod import RUN_AS_GROUP, RUN_AS_USER, workers_for

CHAT_DIR = ROOT / "examples" / "chat"
IMAGE = "registry.example.com/team/maserve-mnist:1.0"
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/managed-by")
# KServe's ComponentExtensionSpec fields this generator uses, with their types (the rest of a
# predictor is an inline PodSpec, validated as one).
KSERVE_FIELDS = {"minReplicas": int, "maxReplicas": int, "scaleMetric": str, "scaleTarget": int,
                 "labels": dict, "annotations": dict}


def make(model_dir: Path = MNIST_DIR, **kwargs: Any) -> dict[str, dict[str, Any]]:
    return manifests(plan(Options(model_dir=model_dir, image=IMAGE, **kwargs)))


def objects(files: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: doc for name, doc in files.items() if not name.endswith("kustomization.yaml")}


def container(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["predictor"] if doc["kind"] == "InferenceService" else doc["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    return only


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "InferenceService":
        return {k: v for k, v in doc["spec"]["predictor"].items() if k not in KSERVE_FIELDS}
    return doc["spec"]["template"]["spec"]


def with_config(tmp_path: Path, edit: Any) -> Path:
    """A copy of examples/mnist's config.json, changed by edit(raw)."""
    raw = json.loads((MNIST_DIR / "config.json").read_text())
    edit(raw)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


# -- (a) validation ------------------------------------------------------------------------------
try:
    import kubernetes_validate as kv
    from kubernetes_validate import utils as kv_utils
except ImportError:  # the (b) tests still run
    kv = None
NO_VALIDATOR = pytest.mark.skipif(kv is None, reason="kubernetes-validate is missing (the test extra installs it)")
VERSIONS = (sorted(set(kv_utils.all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))[-2:]
            if kv is not None else ["previous", "newest"])
VARIANTS = [(d, k) for d in (MNIST_DIR, CHAT_DIR) for k in (False, True)]


def k8s_validate(doc: dict[str, Any], version: str) -> None:
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as exc:
        pytest.fail(f"{doc['kind']} {doc['metadata'].get('name')} invalid for Kubernetes {version}: {exc}")


def validate_inference_service(doc: dict[str, Any], version: str) -> None:
    """What can be validated of a CRD without its schema: the shape, metadata and inline PodSpec."""
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(doc["spec"]) == {"predictor"}
    predictor = doc["spec"]["predictor"]
    for key, kind in KSERVE_FIELDS.items():
        assert isinstance(predictor[key], kind), key
    assert predictor["scaleMetric"] in ("cpu", "memory", "concurrency", "rps")
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    k8s_validate({"apiVersion": "v1", "kind": "Pod", "metadata": doc["metadata"], "spec": pod_spec(doc)}, version)
    pod_meta = {"name": "predictor", "labels": predictor["labels"], "annotations": predictor["annotations"]}
    k8s_validate({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": pod_spec(doc)}, version)


@NO_VALIDATOR
def test_two_newest_versions_known() -> None:
    assert len(VERSIONS) == 2 and VERSIONS[0] != VERSIONS[1], VERSIONS


@NO_VALIDATOR
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("model_dir", "kserve"), VARIANTS, ids=["mnist", "mnist-kserve", "chat", "chat-kserve"])
def test_manifests_validate(model_dir: Path, kserve: bool, version: str) -> None:
    files = make(model_dir, kserve=kserve)
    kinds = sorted(doc["kind"] for doc in objects(files).values())
    expected = ["InferenceService", "Job"] if kserve else ["Deployment", "HorizontalPodAutoscaler", "Job",
                                                           "PodDisruptionBudget", "Service"]
    assert kinds == expected
    for doc in objects(files).values():
        if doc["kind"] == "InferenceService":
            validate_inference_service(doc, version)
        else:
            k8s_validate(doc, version)


@NO_VALIDATOR
def test_invalid_manifest_is_caught() -> None:
    """The validator is really strict: a misspelt field fails, so the passes above mean something."""
    doc = copy.deepcopy(make()["deployment.yaml"])
    doc["spec"]["template"]["spec"]["containers"][0]["startupprobe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, VERSIONS[-1], strict=True)


# -- (b) the values ------------------------------------------------------------------------------
def test_probes_from_health_block() -> None:
    c = container(make()["deployment.yaml"])  # mnist: delay 5, timeout 5, period 5, failures 12
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTP"}
        assert c[probe]["periodSeconds"] == 5 and c[probe]["timeoutSeconds"] == 5
    startup, ready, live = c["startupProbe"], c["readinessProbe"], c["livenessProbe"]
    startup_window = startup["initialDelaySeconds"] + startup["periodSeconds"] * startup["failureThreshold"]
    assert startup_window >= 5 * 12 and startup_window >= 5 + 5 * 12  # both readings of ModelArts' budget
    assert startup["initialDelaySeconds"] == 0  # a fast model is Ready within a period
    assert ready["failureThreshold"] == 3
    assert live["failureThreshold"] == 12  # never sooner than ModelArts would restart it
    assert live["periodSeconds"] * live["failureThreshold"] >= 2 * ready["periodSeconds"] * ready["failureThreshold"]


def test_slow_model_and_string_numbers(tmp_path: Path) -> None:
    def slow(raw: dict[str, Any]) -> None:
        raw["health"] = {"url": "/ping", "protocol": "http", "initial_delay_seconds": "120",
                         "timeout_seconds": "3", "period_seconds": "10", "failure_threshold": "6"}

    files = make(with_config(tmp_path, slow))
    c = container(files["deployment.yaml"])
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/ping" and startup["timeoutSeconds"] == 3
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120 * 6
    assert c["livenessProbe"]["failureThreshold"] == 6
    assert files["deployment.yaml"]["spec"]["progressDeadlineSeconds"] >= 2 * 120 * 6


def test_health_defaults_and_exec(tmp_path: Path) -> None:
    def no_health(raw: dict[str, Any]) -> None:
        del raw["health"]

    c = container(make(with_config(tmp_path, no_health))["deployment.yaml"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"  # maserve always serves it
    assert c["livenessProbe"]["periodSeconds"] == 5 and c["livenessProbe"]["failureThreshold"] == 12

    def exec_health(raw: dict[str, Any]) -> None:
        raw["health"].update(check_method="EXEC", command="test -e /tmp")

    c = container(make(with_config(tmp_path, exec_health))["deployment.yaml"])
    assert c["livenessProbe"]["exec"] == {"command": ["sh", "-c", "test -e /tmp"]}
    assert "httpGet" not in c["livenessProbe"]


def test_https_apis_make_https_probes_and_ports(tmp_path: Path) -> None:
    def https(raw: dict[str, Any]) -> None:
        raw["apis"][0]["protocol"] = "https"

    for kserve in (False, True):
        files = make(with_config(tmp_path, https), kserve=kserve)
        serving = files["inferenceservice.yaml" if kserve else "deployment.yaml"]
        c = container(serving)
        assert c["ports"] == [{"name": "https", "containerPort": 8080, "protocol": "TCP"}]
        assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS" and c["readinessProbe"]["httpGet"]["port"] == "https"
    service = make(with_config(tmp_path, https))["service.yaml"]
    assert service["spec"]["ports"][0]["targetPort"] == "https"


def test_stop_budget_follows_grace_and_drain() -> None:
    files = make()
    assert pod_spec(files["deployment.yaml"])["terminationGracePeriodSeconds"] == 95  # 60 + 29 + 6
    assert pod_spec(make(kserve=True)["inferenceservice.yaml"])["terminationGracePeriodSeconds"] == 95
    assert "lifecycle" not in container(files["deployment.yaml"])  # no preStop: maserve's grace does it
    short = make(env=("MASERVE_GRACE_SECONDS=10", "MASERVE_DRAIN_SECONDS=5"))
    assert pod_spec(short["deployment.yaml"])["terminationGracePeriodSeconds"] == 21
    env = {e["name"]: e["value"] for e in container(short["deployment.yaml"])["env"]}
    assert env["MASERVE_GRACE_SECONDS"] == "10" and env["MASERVE_DRAIN_SECONDS"] == "5"
    # the Job's server has one client, which stops it only after its last answer: no grace.
    assert pod_spec(files["batch/job.yaml"])["terminationGracePeriodSeconds"] == 29 + 6
    with pytest.raises(DeployError, match="90 s bound"):
        make(env=("MASERVE_GRACE_SECONDS=70",))
    with pytest.raises(DeployError, match="MASERVE_PORT"):
        make(env=("MASERVE_PORT=http",))


def test_security_context_matches_the_image() -> None:
    dockerfile = (ROOT / "src" / "maserve" / "image" / "Dockerfile").read_text()
    assert re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE).groups() == (str(RUN_AS_USER), str(RUN_AS_GROUP))
    assert (RUN_AS_USER, RUN_AS_GROUP) == (1000, 100)
    for kserve in (False, True):
        for doc in objects(make(kserve=kserve)).values():
            if doc["kind"] not in ("Deployment", "Job", "InferenceService"):
                continue
            pod, c = pod_spec(doc), container(doc)
            assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsGroup"] == 100
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsUser"] == 1000
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and {"name": tmp[0]["name"], "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]


def test_resources_env_and_workers() -> None:
    c = container(make(cpu="500m", memory="1Gi")["deployment.yaml"])
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {"MASERVE_PORT": "8080", "MASERVE_WORKERS": "1", "MASERVE_GRACE_SECONDS": "60",
                   "MASERVE_DRAIN_SECONDS": "29", "MASERVE_METRICS_PATH": "/metrics", "MASERVE_LOG_FORMAT": "json"}
    assert [workers_for(q) for q in ("250m", "1", "1500m", "3.5", "8")] == [1, 1, 1, 3, 8]
    env = {e["name"]: e["value"] for e in container(make(cpu="4", env=("MASERVE_WORKERS=2",))["deployment.yaml"])["env"]}
    assert env["MASERVE_WORKERS"] == "2"
    with pytest.raises(DeployError, match="--cpu"):
        make(cpu="two")


def test_service_pdb_hpa_scrape() -> None:
    files = make(replicas=3)
    dep, svc, pdb, hpa = (files[n] for n in ("deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml"))
    assert "replicas" not in dep["spec"]  # the HPA owns it
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP",
                                     "appProtocol": "http"}]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (svc["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"],
                     dep["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
        assert "app.kubernetes.io/version" not in selector  # selectors must survive a new image
    job_labels = files["batch/job.yaml"]["spec"]["template"]["metadata"]["labels"]
    assert not svc["spec"]["selector"].items() <= job_labels.items()  # batch pods get no traffic
    assert pdb["spec"]["maxUnavailable"] == 1
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 9
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mnist"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert dep["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics",
        "prometheus.io/scheme": "http"}


def test_scrape_follows_the_metrics_setting() -> None:
    def annotations(**kwargs: Any) -> dict[str, str]:
        return make(**kwargs)["deployment.yaml"]["spec"]["template"]["metadata"]["annotations"]

    assert annotations(env=("MASERVE_METRICS_PATH=/internal/metrics",))["prometheus.io/path"] == "/internal/metrics"
    assert annotations(env=("MASERVE_METRICS_PATH=",)) == {}  # metrics off: nothing to scrape
    assert make(kserve=True, env=("MASERVE_METRICS_PATH=",))["inferenceservice.yaml"]["spec"]["predictor"][
        "annotations"] == {}
    with pytest.raises(DeployError, match="also a path of config.json"):
        make(env=("MASERVE_METRICS_PATH=/health",))  # the server would refuse to start
    with pytest.raises(DeployError, match="must start with /"):
        make(env=("MASERVE_METRICS_PATH=metrics",))


def test_namespace_and_labels_everywhere() -> None:
    for kserve in (False, True):
        files = make(namespace="models", kserve=kserve)
        for name, doc in files.items():
            if name.endswith("kustomization.yaml"):
                assert doc["namespace"] == "models"
                continue
            assert doc["metadata"]["namespace"] == "models", name
            labels = doc["metadata"]["labels"]
            assert all(key in labels for key in LABELS), name
            assert labels["app.kubernetes.io/managed-by"] == "maserve"
            assert labels["app.kubernetes.io/name"] == "mnist" and labels["app.kubernetes.io/version"] == "1.0"
    isvc = make(kserve=True)["inferenceservice.yaml"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert container(isvc)["name"] == "kserve-container"
    assert container(isvc)["readinessProbe"] == container(make()["deployment.yaml"])["readinessProbe"]


def test_job_shards_like_maserve_batch(tmp_path: Path) -> None:
    files = make(shards=3, src_path="/data/input/list.manifest", dest_path="/data/out")
    job = files["batch/job.yaml"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    c = container(job)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["input"] == {"name": "input", "mountPath": "/data/input", "readOnly": True}  # the manifest's folder
    assert mounts["output"]["mountPath"] == "/data/out"
    assert c["command"][:2] == ["sh", "-c"]
    # Run the command for every index with a stub `maserve` printing its arguments as JSON.
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "maserve").write_text('#!/bin/sh\nexec python3 -c \'import json, sys; print(json.dumps(sys.argv[1:]))\' "$@"\n')
    (stub / "maserve").chmod(0o755)
    shards = []
    for index in range(3):
        done = subprocess.run(c["command"], capture_output=True, text=True, check=True,
                              env={"PATH": f"{stub}:{os.environ['PATH']}", "JOB_COMPLETION_INDEX": str(index)})
        argv = json.loads(done.stdout)
        args = _parser().parse_args(argv)  # maserve's own parser takes every flag
        assert args.command == "batch" and args.cmd == "sh /home/run.sh" and args.resume
        assert str(args.config) == "/home/mind/model" and str(args.src_path) == "/data/input/list.manifest"
        assert str(args.dest_path) == "/data/out" and TASK_ID.fullmatch(args.task_id)
        shards.append(Shard.parse(args.shard))
    assert [(s.index, s.count) for s in shards] == [(0, 3), (1, 3), (2, 3)]  # 0-based, as the index
    items = list(range(20))
    taken = [item for s in shards for item in s.take(items)]
    assert sorted(taken) == items  # every input in exactly one shard
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MASERVE_GRACE_SECONDS"] == "0"
    assert '--shard "$JOB_COMPLETION_INDEX/3"' in batch_script(plan(Options(model_dir=MNIST_DIR, image=IMAGE, shards=3)))
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == [2] and pod_spec(job)["restartPolicy"] == "Never"


def test_bad_options() -> None:
    for kwargs, match in (({"name": "My_Model"}, "--name"), ({"namespace": "A"}, "--namespace"),
                          ({"replicas": 0}, "--replicas"), ({"shards": 0}, "--shards"),
                          ({"src_path": "data"}, "--src-path"), ({"env": ("NOEQUALS",)}, "KEY=VALUE"),
                          ({"env": ("MASERVE_TLS_CERT=/c.pem",)}, "together")):
        with pytest.raises(DeployError, match=match):
            make(**kwargs)
    with pytest.raises(DeployError, match="config.json"):
        make(model_dir=ROOT / "tests")


def test_cli_writes_files_and_kustomization(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k8s"
    assert main(["deploy", "k8s", str(MNIST_DIR), "--image", IMAGE, "--replicas", "2", "--namespace", "ml",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml"]
    assert yaml.safe_load((out / "batch" / "kustomization.yaml").read_text())["resources"] == ["job.yaml"]
    expected = make(namespace="ml")
    for rel, doc in expected.items():
        text = (out / rel).read_text()
        assert text.startswith("# Generated by `maserve deploy k8s`") and "&id" not in text
        assert yaml.safe_load(text) == doc, rel  # the YAML is exactly the dicts tested above
        assert f"wrote {out / rel}" in printed
    assert "preStop" in (out / "deployment.yaml").read_text()  # the comment saying why there is none
    # --kserve into the same folder replaces the plain variant's files.
    assert main(["deploy", "k8s", str(MNIST_DIR), "--image", IMAGE, "--kserve", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.yaml")) == ["inferenceservice.yaml", "kustomization.yaml"]
    assert main(["deploy", "k8s", str(MNIST_DIR), "--image", IMAGE, "--name", "Bad_Name", "-o", str(out)]) == 2


def test_installed_command(tmp_path: Path) -> None:
    done = subprocess.run([str(MASERVE_BIN), "deploy", "k8s", str(CHAT_DIR), "--image", IMAGE, "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "stop budget 95 s" in done.stdout and (tmp_path / "deployment.yaml").is_file()


# -- (c) for real, with podman -------------------------------------------------------------------
POD_IMAGE = os.environ.get("MASERVE_TEST_IMAGE", "maserve-mnist:check")
GRACE = 5  # seconds: the stop is timed, so a short grace keeps the test short


def _podman_ready() -> str | None:
    """Why the podman test cannot run here, or None."""
    from maserve.check.image import engine_works

    if not engine_works("podman"):
        return "podman cannot run containers here (not installed, or image/podman-env.sh not sourced)"
    if subprocess.run(["podman", "image", "exists", POD_IMAGE], check=False).returncode != 0:
        return f"the image {POD_IMAGE} is missing (image/ci-image.sh builds it; MASERVE_TEST_IMAGE names another)"
    return None


@pytest.fixture
def kube_deployment(tmp_path: Path) -> Any:
    reason = _podman_ready()
    if reason:
        pytest.skip(reason)
    files = manifests(plan(Options(model_dir=MNIST_DIR, image=POD_IMAGE, name="maserve-kube-test", cpu="1",
                                   env=(f"MASERVE_GRACE_SECONDS={GRACE}",))))
    doc = copy.deepcopy(files["deployment.yaml"])
    port = free_port()
    # Only the networking is the test's own: the pod's port published on the host's loopback.
    container(doc)["ports"][0].update(hostPort=port, hostIP="127.0.0.1")
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(doc))
    yield doc, path, port
    subprocess.run(["podman", "kube", "down", str(path)], capture_output=True, check=False, timeout=120)


def _get(port: int, path: str, timeout: float = 5) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_podman_kube_play_serves_and_stops_cleanly(kube_deployment: Any) -> None:
    import http.client

    from helpers import post_image

    doc, path, port = kube_deployment
    played = subprocess.run(["podman", "kube", "play", str(path)], capture_output=True, text=True, timeout=300,
                            check=False)
    assert played.returncode == 0, played.stdout + played.stderr
    deadline = time.monotonic() + 120
    status = None
    while time.monotonic() < deadline:
        try:
            status = _get(port, "/health")
            if status == 200:
                break
        except OSError:
            pass
        time.sleep(0.5)
    assert status == 200, "the played pod never answered /health"
    pod = _played_pod(doc)
    applied = subprocess.run(["podman", "inspect", f"{pod}-maserve", "--format",
                              "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert applied == ["1000:100", "true"]  # it serves as ma-user on a read-only root filesystem
    seven = (MNIST_DIR / "samples" / "seven.jpg").read_bytes()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert post_image(conn, seven, "seven.jpg").json() == {"mnist_result": 7}
    conn.close()

    # A light load (one request at a time, a fresh connection each, as clients of a terminating pod
    # do after its Connection: close) while the pod is taken down.
    results: list[tuple[float, bool]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                ok = post_image(c, seven, "seven.jpg").status == 200
                c.close()
            except OSError:
                ok = False
            results.append((sent, ok))
            time.sleep(0.05)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(1)
    budget = pod_spec(doc)["terminationGracePeriodSeconds"]
    # What the kubelet does: SIGTERM to the app container, SIGKILL after terminationGracePeriodSeconds,
    # the pod's sandbox (its network) last. `podman kube down` SIGKILLs at once before podman 5.1
    # (containers/podman#22397), `podman pod stop` takes the infra container and the port mapping
    # down with the app, and podman does not map terminationGracePeriodSeconds: so the container is
    # stopped with the manifest's budget first, then `kube down` removes the pod.
    down_at = time.monotonic()
    stopped = subprocess.run(["podman", "stop", "--time", str(budget), f"{pod}-maserve"], capture_output=True,
                             text=True, timeout=budget + 60, check=False)
    took = time.monotonic() - down_at
    stop.set()
    thread.join(timeout=15)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    code = subprocess.run(["podman", "inspect", f"{pod}-maserve", "--format", "{{.State.ExitCode}}"],
                          capture_output=True, text=True, check=False).stdout.strip()
    down = subprocess.run(["podman", "kube", "down", str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    # Served until the grace period ends (minus a second for signal delivery), exited by itself (0,
    # not SIGKILL's 137) within grace + drain, well before the budget ran out.
    due = [ok for sent, ok in results if sent < down_at + GRACE - 1]
    print(f"stop took {took:.1f} s, exit {code}; {len(due)} requests during the grace period, "
          f"{sum(ok for _, ok in results)} of {len(results)} answered in all")
    assert due and all(due), f"{due.count(False)} of {len(due)} requests failed during the grace period"
    assert code == "0", f"the server's exit status was {code!r}"
    assert GRACE - 1 <= took <= GRACE + 29, f"the stop took {took:.1f} s (grace {GRACE} s, budget {budget} s)"


def _played_pod(doc: dict[str, Any]) -> str:
    """The pod `podman kube play` made of the Deployment (`NAME-pod-0` in podman 4, `NAME-pod` later)."""
    instance = doc["metadata"]["labels"]["app.kubernetes.io/instance"]
    names = subprocess.run(["podman", "pod", "ps", "--filter", f"label=app.kubernetes.io/instance={instance}",
                            "--format", "{{.Name}}"], capture_output=True, text=True, check=True).stdout.split()
    assert len(names) == 1, names
    return names[0]


def test_job_command_in_the_image(tmp_path: Path) -> None:
    """podman cannot play a Job, so its pod's container is run as the kubelet would (the Job's
    command and env, uid 1000:100, read-only root, /tmp writable, every capability dropped, the two
    claims as mounts), once per index and once more for a retried shard 0."""
    reason = _podman_ready()
    if reason:
        pytest.skip(reason)
    shards = 2
    job = manifests(plan(Options(model_dir=MNIST_DIR, image=POD_IMAGE, cpu="1", shards=shards)))["batch/job.yaml"]
    c = container(job)
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    names = sorted(p.name for p in (MNIST_DIR / "samples").iterdir() if p.suffix in (".png", ".jpg"))
    for name in names:
        (inputs / name).write_bytes((MNIST_DIR / "samples" / name).read_bytes())
    output.mkdir(mode=0o777)
    output.chmod(0o777)  # the claim, writable by ma-group (fsGroup on a cluster)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    base = ["podman", "run", "--rm", "--user", f"{RUN_AS_USER}:{RUN_AS_GROUP}", "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--tmpfs", mounts["tmp"],
            "-v", f"{inputs}:{mounts['input']}:ro", "-v", f"{output}:{mounts['output']}"]
    for item in c["env"]:
        base += ["-e", f"{item['name']}={item['value']}"]
    for index in [*range(shards), 0]:
        done = subprocess.run([*base, "-e", f"JOB_COMPLETION_INDEX={index}", "--entrypoint", c["command"][0],
                               c["image"], *c["command"][1:]], capture_output=True, text=True, timeout=300,
                              check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    manifests_ = sorted(output.glob("*.manifest"))
    assert [p.name for p in manifests_] == [f"infer-result-mnist-batch-shard-{k}-of-{shards}.manifest"
                                           for k in range(shards)]
    lines = [json.loads(line) for p in manifests_ for line in p.read_text().splitlines()]
    assert sorted(Path(line["source"]).name for line in lines) == names  # each input once, the retry added none
    assert all(line["result"] == "SUCCESSFUL" for line in lines)
    assert json.loads((output / "infer-result-mnist-batch" / "seven.jpg_result.txt").read_text()) == {"mnist_result": 7}
