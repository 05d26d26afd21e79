"""The report: a plain table for people, or the JSON the contract fixes for scripts."""

from __future__ import annotations

import json

from maserve.check.result import FAIL, Result


def as_json(results: list[Result]) -> str:
    ok = not any(r.verdict == FAIL for r in results)
    return json.dumps({"ok": ok, "results": [r.as_dict() for r in results]}, indent=2)


def as_table(results: list[Result]) -> str:
    rows = [("check", "verdict", "evidence")] + [(r.check, r.verdict, r.evidence) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{c:<{widths[0]}} | {v:<{widths[1]}} | {e}" for c, v, e in rows]
    lines.insert(1, f"{'-' * widths[0]}-+-{'-' * widths[1]}-+-{'-' * 8}")
    failed = [r.check for r in results if r.verdict == FAIL]
    lines.append("")
    lines.append(f"FAILED: {', '.join(failed)}" if failed else "no check failed")
    return "\n".join(lines)
