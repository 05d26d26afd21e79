#!/usr/bin/env python3
"""Set up the peer servers of the benchmark: one venv per peer under .venv-peers/<peer>.

    python3 bench/peers/setup.py                  # every peer (litserve, ray, bentoml)
    python3 bench/peers/setup.py litserve ray     # some of them
    python3 bench/peers/setup.py --force bentoml  # reinstall even when the stamp matches
    python3 bench/peers/setup.py --check          # say which venvs are set up; install nothing

Each venv gets its pinned peer plus onnxruntime, numpy and pillow at the versions of the project
venv (.venv, read with importlib.metadata there), so every server runs the same inference and the
same decode. python-multipart (the form parser FastAPI needs for `UploadFile`; BentoML depends on
it anyway) is pinned to the project venv's version too. maserve itself is not installed: importing
it now pulls jsonschema and more, so the peer apps load the example's service.py through
bench/peers/workload.py, which stands in for the few maserve names it imports.

Idempotent: a stamp file (.venv-peers/<peer>/maserve-peer-stamp.json) records the requirement set
and the interpreter; a rerun with the same set skips that venv. Standard library only; run it with
any python3 (the venvs are made with the project venv's base interpreter, so the same Python).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT_VENV = REPO / ".venv"
PEERS_ROOT = REPO / ".venv-peers"
STAMP = "maserve-peer-stamp.json"

# The pinned peers (issue 16). Each exists on the mirror at this version (checked with
# `pip download --no-deps`).
PEER_PACKAGES: dict[str, list[str]] = {
    "litserve": ["litserve==0.2.19"],
    "ray": ["ray[serve]==2.60.0"],
    "bentoml": ["bentoml==1.4.40"],
}
# Shared with maserve, at the project venv's versions.
SHARED = ("onnxruntime", "numpy", "pillow", "python-multipart")


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def project_versions(venv: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        f"names = {list(SHARED)!r}\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} not found: make the project venv first (make, or python3 -m venv .venv && pip install -e .)")
    found = json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout)
    for needed in ("onnxruntime", "numpy", "pillow"):
        if needed not in found:
            raise SystemExit(f"{needed} is not installed in {venv}: cannot pin the peers to its version")
    return found


def base_interpreter(venv: Path) -> str:
    """The interpreter the project venv was made from (pyvenv.cfg), else this one."""
    cfg = venv / "pyvenv.cfg"
    if cfg.is_file():
        values = {}
        for line in cfg.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
        exe = values.get("executable")
        if exe and Path(exe).is_file():
            return exe
        home = values.get("home")
        if home:
            for name in (f"python{values.get('version', '')[:4].rstrip('.')}", "python3"):
                if (Path(home) / name).is_file():
                    return str(Path(home) / name)
    return sys.executable


def requirements(peer: str, shared: dict[str, str]) -> list[str]:
    return PEER_PACKAGES[peer] + [f"{name}=={version}" for name, version in sorted(shared.items())]


def read_stamp(venv: Path) -> dict | None:
    try:
        return json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return None


def stamp_ok(venv: Path, wanted: dict) -> bool:
    return read_stamp(venv) == wanted and (venv / "bin" / "python").exists()


def installed(venv: Path, names: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code, *names], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def setup_peer(peer: str, python: str, shared: dict[str, str], force: bool) -> bool:
    venv = PEERS_ROOT / peer
    reqs = requirements(peer, shared)
    wanted = {"python": python, "requirements": reqs}
    if not force and stamp_ok(venv, wanted):
        log(f"{peer}: up to date in {venv.relative_to(REPO)} ({', '.join(reqs)}): skipped")
        return True
    t0 = time.monotonic()
    if not (venv / "bin" / "python").exists():
        log(f"{peer}: creating {venv.relative_to(REPO)} with {python}")
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    (venv / STAMP).unlink(missing_ok=True)
    log(f"{peer}: pip install {' '.join(reqs)}")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    proc = subprocess.run([*pip, *reqs])
    if proc.returncode != 0:
        log(f"{peer}: pip install FAILED (code {proc.returncode}) after {time.monotonic() - t0:.0f} s")
        return False
    check = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    if check.returncode != 0:
        log(f"{peer}: pip check reports: {check.stdout.strip() or check.stderr.strip()}")
    names = [r.split("==")[0].split("[")[0] for r in reqs]
    versions = installed(venv, names)
    wrong = [f"{n} {versions.get(n)} (wanted {r})" for n, r in zip(names, reqs) if versions.get(n) != r.split("==")[1]]
    if wrong:
        log(f"{peer}: installed versions differ: {', '.join(wrong)}")
        return False
    (venv / STAMP).write_text(json.dumps(wanted, indent=1) + "\n")
    log(f"{peer}: ready in {time.monotonic() - t0:.0f} s: {', '.join(f'{n}=={v}' for n, v in versions.items())}")
    return True


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("peers", nargs="*", help=f"peers to set up, among {', '.join(PEER_PACKAGES)} (default: all)")
    p.add_argument("--force", action="store_true", help="reinstall even if the stamp matches")
    p.add_argument("--check", action="store_true", help="only report which venvs are set up")
    p.add_argument("--python", help="interpreter for the venvs (default: the project venv's base interpreter)")
    args = p.parse_args(argv)
    peers = args.peers or list(PEER_PACKAGES)
    unknown = [peer for peer in peers if peer not in PEER_PACKAGES]
    if unknown:
        p.error(f"unknown peer(s) {', '.join(unknown)}; choose among {', '.join(PEER_PACKAGES)}")
    shared = project_versions(PROJECT_VENV)
    python = args.python or base_interpreter(PROJECT_VENV)
    if args.check:
        missing = [peer for peer in peers if not stamp_ok(PEERS_ROOT / peer, {"python": python, "requirements": requirements(peer, shared)})]
        for peer in peers:
            log(f"{peer}: {'NOT set up (or out of date)' if peer in missing else 'set up'}")
        return 1 if missing else 0
    PEERS_ROOT.mkdir(exist_ok=True)
    log(f"shared pins from {PROJECT_VENV.relative_to(REPO)}: {', '.join(f'{k}=={v}' for k, v in sorted(shared.items()))}")
    failed = [peer for peer in peers if not setup_peer(peer, python, shared, args.force)]
    if failed:
        log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    sys.exit(main(sys.argv[1:]))
