"""Graceful exit: SIGTERM under load, as ModelArts stops a container during a rolling upgrade.

The service must go on serving (new connections too) for the grace period, finish what it
accepted, and exit before the platform's bound; the checker measures each of those.
"""

from __future__ import annotations

import subprocess
import time
from typing import Callable

from maserve.check.load import DROPPED, OK, RACE, Call, Load, Outcome
from maserve.check.result import FAIL, PASS, SKIP, WARN, Result, progress
from maserve.check.target import Options, Target

WARMUP = 2.0  # seconds of load before SIGTERM
TOLERANCE = 1.0  # the grace may end this much early (timer granularity, clocks)
KILL_MARGIN = 5.0  # kill the process this long past the stop bound
POLL = 0.05
AFTER_EXIT = 0.3  # keep the load on this long after the exit, to see refusals


def check_shutdown(target: Target, options: Options, calls: list[Call],
                   on_terminate: Callable[[], None] | None = None) -> Result:
    proc = target.proc  # the wrapper shell: it exits when the command does, with its status
    if proc is None:
        return Result("shutdown", SKIP, "a service at a URL cannot be stopped by the checker; use --cmd")
    if proc.poll() is not None:
        return Result("shutdown", FAIL, f"the process had already exited ({proc.returncode})")
    hard_deadline = time.monotonic() + WARMUP + options.stop_bound + KILL_MARGIN + 5
    load = Load(target.endpoint, calls, timeout=min(30.0, options.stop_bound), deadline=hard_deadline)
    progress(f"shutdown: {WARMUP:g} s of load, then SIGTERM; grace {options.grace:g} s, bound {options.stop_bound:g} s")
    load.start()
    time.sleep(WARMUP)
    term = time.monotonic()
    target.terminate()
    if on_terminate is not None:
        on_terminate()
    exited_after = _wait_exit(proc, term, options.stop_bound + KILL_MARGIN)
    if exited_after is not None:
        time.sleep(AFTER_EXIT)
    load.finish()
    if exited_after is None:
        target.cleanup()
    return _verdict(load.outcomes, term, exited_after, target.exit_code(), options)


def _wait_exit(proc: subprocess.Popen[bytes], term: float, limit: float) -> float | None:
    last_note = term
    for _ in range(int(limit / POLL) + 2):
        if proc.poll() is not None:
            return time.monotonic() - term
        now = time.monotonic()
        if now - term >= limit:
            return None
        if now - last_note >= 10:
            progress(f"shutdown: still running {now - term:.0f} s after SIGTERM")
            last_note = now
        time.sleep(POLL)
    return None


def _verdict(outcomes: list[Outcome], term: float, exited_after: float | None, code: int | None,
             options: Options) -> Result:
    window_end = options.grace - TOLERANCE  # until then everything must be served
    rel = [(o.start - term, o) for o in outcomes]
    failed = [o for t, o in rel if t < window_end and o.kind not in (OK, RACE)]
    dropped = [o for t, o in rel if t >= window_end and o.kind == DROPPED]
    new_ok = [t for t, o in rel if o.new_connection and o.kind == OK and t >= 0]
    served_until = max(new_ok, default=0.0)
    answered = sum(o.kind == OK for o in outcomes)
    parts = [
        f"{len(failed)} of {len(outcomes)} requests failed while they should have been served",
        f"new connections answered until {served_until:.1f} s after SIGTERM (grace {options.grace:g} s)",
        f"{len(dropped)} in-flight dropped",
    ]
    problems = []
    if failed:
        kinds = sorted({o.kind for o in failed})
        first = min(o.start - term for o in failed)
        problems.append(f"{len(failed)} failed ({', '.join(kinds)}) from {first:+.1f} s")
    if served_until < window_end:
        problems.append(f"stopped serving {served_until:.1f} s after SIGTERM")
    if dropped:
        problems.append(f"dropped {len(dropped)} in-flight")
    if exited_after is None:
        problems.append(f"still running after {options.stop_bound + KILL_MARGIN:g} s (killed)")
        parts.append("killed")
    else:
        parts.append(f"exited {code} after {exited_after:.1f} s (bound {options.stop_bound:g} s)")
        if exited_after >= options.stop_bound:
            problems.append(f"exited after {exited_after:.1f} s, past the {options.stop_bound:g} s bound")
    evidence = f"{answered} answered; " + "; ".join(parts)
    if problems:
        return Result("shutdown", FAIL, "; ".join(problems) + " — " + evidence)
    if code != 0:
        return Result("shutdown", WARN, f"exit code {code} (0 expected) — {evidence}")
    return Result("shutdown", PASS, evidence)


