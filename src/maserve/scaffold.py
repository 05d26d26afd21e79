"""`maserve init NAME`: a model directory that validates, serves and answers from the first minute.

A working example to edit beats an empty template: config.json passes `maserve config validate`,
and service.py doubles numbers, so serve, predict and the image build can be tried before the real
model exists.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from maserve.validate import ALGORITHM_MAX, ERROR, validate_config

TEMPLATES = ("service.py", "README.md")


class ScaffoldError(ValueError):
    """The directory cannot be created (it exists with files in it, or NAME is unusable)."""


def algorithm_name(name: str) -> str:
    """NAME itself if ModelArts accepts it as model_algorithm, else the nearest name it accepts."""
    if not _algorithm_errors(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")
    if not cleaned[:1].isascii() or not cleaned[:1].isalpha():
        cleaned = f"model_{cleaned}".rstrip("_")
    return cleaned[:ALGORITHM_MAX]


def image_name(name: str) -> str:
    """A container image repository name (lower case, [a-z0-9._-]) for the README's build line."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("._-") or "model"


def config_for(algorithm: str) -> dict[str, Any]:
    """The scaffold's config.json: one JSON api taking numbers and answering numbers."""
    numbers = {"type": "array", "items": {"type": "number"}}
    return {
        "model_algorithm": algorithm,
        "model_type": "Image",
        "apis": [
            {
                "protocol": "http",
                "url": "/",
                "method": "post",
                "request": {
                    "Content-type": "application/json",
                    "data": {"type": "object", "properties": {"inputs": numbers}, "required": ["inputs"]},
                },
                "response": {
                    "Content-type": "application/json",
                    "data": {"type": "object", "properties": {"outputs": numbers}, "required": ["outputs"]},
                },
            }
        ],
        "health": {
            "url": "/health",
            "protocol": "http",
            "initial_delay_seconds": 5,
            "timeout_seconds": 5,
            "period_seconds": 5,
            "failure_threshold": 12,
        },
    }


def scaffold(name: str, parent: Path) -> Path:
    """Create parent/NAME with config.json, service.py and README.md; return the directory."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ScaffoldError(f"{name!r} is not a directory name (use --dir for the parent directory)")
    target = parent / name
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} already exists and is not empty; choose another NAME or --dir")
    algorithm = algorithm_name(name)
    values = {"name": name, "algorithm": algorithm, "dir": name, "image": image_name(name)}
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config_for(algorithm), indent=2) + "\n", encoding="utf-8")
    templates = resources.files("maserve") / "templates"
    for filename in TEMPLATES:
        text = (templates / f"{filename}.tmpl").read_text(encoding="utf-8")
        (target / filename).write_text(Template(text).substitute(values), encoding="utf-8")
    return target


def _algorithm_errors(name: str) -> list[str]:
    findings = validate_config({"model_algorithm": name, "model_type": "Image"})
    return [f.message for f in findings if f.level == ERROR]
