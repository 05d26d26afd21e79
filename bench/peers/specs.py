"""What runs for each peer server of the benchmark: `peer_spec(name, model_dir, workers)`.

    from peers.specs import PEERS, missing_peers, peer_spec   # with bench/ on sys.path (run.py)

Each spec is a bench/servers.py `ServerSpec` (so start_server, stop_server, cpu_seconds,
memory_of and bench_server take it as it is) with two more fields:

- `health_path`: the path that answers 200 once the peer is ready ("/health", or BentoML's
  "/readyz"); it is also set as `spec.health` (relative to the url, "readyz"), the field
  servers.py's wait_healthy polls.
- `venv`: the peer's venv (.venv-peers/<peer>, made by bench/peers/setup.py).

BentoML's workers run in sessions of their own (its circus supervisor calls setsid):
servers.py's session_pids follows descendants too, so cpu_seconds, memory_of and stop_server
count and stop them like any server's processes.

Every peer listens on 127.0.0.1 on a free port, serves `POST /` with the multipart field
`images` and answers what maserve's example answers ({"mnist_result": 7}, or {"predictions":
[5 x {label, score}]}), runs PEER_WORKERS=workers processes/replicas, each with one onnxruntime
session with one intra-op thread, and stops on SIGTERM (each within a few seconds).
"""

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from servers import HOST, REPO, ServerSpec, free_port  # noqa: E402

PEERS_ROOT = REPO / ".venv-peers"
# Benchmark name -> (venv, batching variant)
PEERS = ("litserve", "litserve-batch", "ray", "ray-batch", "bentoml")
_VENV = {"litserve": "litserve", "litserve-batch": "litserve", "ray": "ray", "ray-batch": "ray", "bentoml": "bentoml"}
HEALTH_PATHS = {"litserve": "/health", "litserve-batch": "/health", "ray": "/health", "ray-batch": "/health",
                "bentoml": "/readyz"}
# What each health path answers when ready (for logs; the status code is what counts).
HEALTH_BODIES = {"litserve": b"ok", "litserve-batch": b"ok", "ray": b'{"health":"true"}',
                 "ray-batch": b'{"health":"true"}', "bentoml": b""}


@dataclass
class PeerSpec(ServerSpec):
    health_path: str = "/health"
    venv: Path = PEERS_ROOT


def peer_spec(name: str, model_dir: Path, workers: int, port: int | None = None) -> PeerSpec:
    """The command line and environment of peer `name` serving `model_dir` with `workers`
    processes, on a free loopback port (or `port`)."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose among {', '.join(PEERS)}")
    venv = PEERS_ROOT / _VENV[name]
    port = port or free_port()
    env = {
        "PEER_MODEL_DIR": str(Path(model_dir).resolve()),
        "PEER_PORT": str(port),
        "PEER_WORKERS": str(workers),
        "PEER_BATCH": "1" if name.endswith("-batch") else "0",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if name.startswith("litserve"):
        argv = [str(venv / "bin" / "python"), str(HERE / "litserve_app.py")]
    elif name.startswith("ray"):
        argv = [str(venv / "bin" / "python"), str(HERE / "ray_app.py")]
        env["RAY_USAGE_STATS_ENABLED"] = "0"
    else:  # bentoml
        argv = [str(venv / "bin" / "bentoml"), "serve", "bentoml_service:ExampleService",
                "--working-dir", str(HERE), "--host", HOST, "--port", str(port)]
        env["BENTOML_DO_NOT_TRACK"] = "True"
    spec = PeerSpec(name, argv, env, f"http://{HOST}:{port}/", port, health_path=HEALTH_PATHS[name], venv=venv)
    spec.health = HEALTH_PATHS[name].lstrip("/")  # ServerSpec.health (relative to url), what wait_healthy polls
    return spec


# ---------------------------------------------------------------------------------------------
def _setup_module():
    spec = importlib.util.spec_from_file_location("maserve_bench_peers_setup", HERE / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def missing_peers(names=PEERS) -> dict[str, str]:
    """{peer name: why it cannot run} for the peers whose venv is not set up (or out of date
    against the project venv's onnxruntime/numpy/pillow); empty when all can run. The fix is
    `python3 bench/peers/setup.py`."""
    setup = _setup_module()
    try:
        shared = setup.project_versions(setup.PROJECT_VENV)
    except SystemExit as exc:
        return {name: str(exc) for name in names}
    python = setup.base_interpreter(setup.PROJECT_VENV)
    problems = {}
    for name in names:
        venv_name = _VENV[name]
        venv = PEERS_ROOT / venv_name
        wanted = {"python": python, "requirements": setup.requirements(venv_name, shared)}
        if not (venv / "bin" / "python").exists():
            problems[name] = f"{venv} does not exist (python3 bench/peers/setup.py {venv_name})"
        elif not setup.stamp_ok(venv, wanted):
            problems[name] = f"{venv} is not set up for {', '.join(wanted['requirements'])} (python3 bench/peers/setup.py {venv_name})"
    return problems


if __name__ == "__main__":  # python3 bench/peers/specs.py: each peer's command, and what is missing
    import shlex

    missing = missing_peers()
    for peer in PEERS:
        s = peer_spec(peer, REPO / "examples" / "mnist", 2, port=8000)
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in s.env.items())
        print(f"{peer}: {env} {shlex.join(s.argv)}   # health {s.health_path}{'   MISSING: ' + missing[peer] if peer in missing else ''}")
