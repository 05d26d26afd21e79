"""What runs for each peer server of the benchmark: `peer_spec(name, model_dir, workers)`.

    from peers.specs import PEERS, missing_peers, peer_spec   # with bench/ on sys.path (run.py)

Each spec is a bench/servers.py `ServerSpec` (so start_server, stop_server, cpu_seconds,
memory_of and bench_server take it as it is) with two more fields:

- `health_path`: the path that answers 200 once the peer is ready ("/health", or BentoML's
  "/readyz"); it is also set as `spec.health` (relative to the url, "readyz"), the field
  servers.py's wait_healthy polls.
- `venv`: the peer's venv (.venv-peers/<peer>, made by bench/peers/setup.py).

BentoML's workers run in sessions of their own (its circus supervisor calls setsid), so
servers.py's session-based cpu_seconds / memory_of / stop_server miss them: use
`tree_cpu_seconds`, `tree_memory` (session + descendants) and `tree_snapshot` before the stop
plus `kill_leftovers` after it, below (the same numbers as servers.py's for the other servers).

Every peer listens on 127.0.0.1 on a free port, serves `POST /` with the multipart field
`images` and answers what maserve's example answers ({"mnist_result": 7}, or {"predictions":
[5 x {label, score}]}), runs PEER_WORKERS=workers processes/replicas, each with one onnxruntime
session with one intra-op thread, and stops on SIGTERM (each within a few seconds).
"""

import importlib.util
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from servers import CLOCK_TICKS, HOST, REPO, ServerSpec, free_port  # noqa: E402

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
# Processes. bench/servers.py finds a server's processes by its session (start_new_session), but
# BentoML's supervisor (circus) starts each worker with os.setsid(): the workers are in sessions
# of their own, and the session alone misses them (and their CPU time and memory). These follow
# the process tree as well: the session's processes and every descendant of them.


def _proc_table() -> dict[int, tuple[int, int, int, int, int]]:
    """{pid: (ppid, session, utime + stime ticks, start time, state is zombie)} of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) < 20:
            continue
        table[int(entry)] = (int(rest[1]), int(rest[3]), int(rest[11]) + int(rest[12]), int(rest[19]),
                             int(rest[0] == "Z"))
    return table


def process_tree(root: int, table: dict | None = None) -> list[int]:
    """The live processes of `root`'s server: its session and every descendant of those."""
    table = _proc_table() if table is None else table
    found = {pid for pid, row in table.items() if (row[1] == root or pid == root) and not row[4]}
    children: dict[int, list[int]] = {}
    for pid, row in table.items():
        children.setdefault(row[0], []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and not table[child][4]:
                found.add(child)
                todo.append(child)
    return sorted(found)


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of every live process of the server (each process's stat sums its threads)."""
    table = _proc_table()
    return sum(table[pid][2] for pid in process_tree(root, table)) / CLOCK_TICKS


def tree_memory(root: int) -> tuple[int, float, float]:
    """(number of processes, summed RSS MB, summed PSS MB) over the server's processes."""
    pids = process_tree(root)
    rss_kb = pss_kb = 0
    for pid in pids:
        for path, key in ((f"/proc/{pid}/status", "VmRSS:"), (f"/proc/{pid}/smaps_rollup", "Pss:")):
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith(key):
                            if key == "VmRSS:":
                                rss_kb += int(line.split()[1])
                            else:
                                pss_kb += int(line.split()[1])
                            break
            except OSError:
                pass
    return len(pids), rss_kb / 1024.0, pss_kb / 1024.0


def tree_snapshot(root: int) -> dict[int, int]:
    """{pid: start time} of the server's processes now (taken before it is stopped)."""
    table = _proc_table()
    return {pid: table[pid][3] for pid in process_tree(root, table)}


def kill_leftovers(snapshot: dict[int, int]) -> int:
    """SIGKILL the processes of `snapshot` still alive (the same processes: same start time)
    after the server's master has exited; how many there were."""
    table = _proc_table()
    killed = 0
    for pid, started in snapshot.items():
        row = table.get(pid)
        if row is not None and row[3] == started and not row[4]:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
    return killed


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
