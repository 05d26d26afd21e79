"""One verdict per check, with the spec line it enforces, so a report reads as the spec's checklist."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

PASS = "PASS"
FAIL = "FAIL"
WARN = "WARN"
SKIP = "SKIP"

# Verbatim fragments of /work/shared/spec/modelarts-custom-image-spec.txt, one per check.
SPEC = {
    "config": "The inference API must be the same as the URL defined by apis in config.json.",
    "port": "curl -X POST \\ http://{Listening IP address}:8080/ … listen_ip indicates the container IP address.",
    "health": 'GET /health … Sample response {"health": "true"} … 200 OK Request sent',
    "apis": "The inference API must be the same as the URL defined by apis in config.json.",
    # Only for a config.json that declares such apis (ModelArts' docs on custom images, not the spec).
    "stream": "(ModelArts docs) SSE: the response's Content-Type must be text/event-stream; the timeout is a "
    "time-to-first-chunk limit, reset by every chunk",
    "websocket": "(ModelArts docs) WebSocket upgrade: only for images that speak WebSocket; messages over 64 KB "
    "are split into frames",
    "logs": "Configure standard output so that logs can be properly displayed.",
    # Only for an image built for a GPU (`maserve build --accelerator cuda`, or one that holds onnxruntime-gpu).
    "accelerator": "(ModelArts GPU flavors, not in the spec) the model should run on the GPU the service is given; "
    "without one it must still start and answer, on the CPU",
    "metrics": "(ModelArts docs) the newer stack can scrape an image's own metrics path (http,8080,metrics), "
    "in Prometheus text",
    "keepalive": "To ensure that services are not interrupted during a rolling upgrade, set HTTP keep-alive to 200.",
    "shutdown": "capture SIGTERM signals in the container and wait for 60s before gracefully exiting … "
    "processes all received requests. The whole duration is not longer than 90s.",
    # The image checks (`--image` only).
    "boot": "set the boot file of an image to /home/run.sh and use CMD to set the default boot path. … "
    'CMD ["sh", "/home/run.sh"]',
    "size": "The size of a custom image cannot exceed 10 GB.",
    "user": "(not in the spec) ModelArts' convention: the service runs as ma-user (uid 1000, gid 100), not root",
    "batch-deps": "To deploy a batch service, install dependency packages such as Python, JRE/JDK, and ZIP in the image.",
    "secrets": "No malicious code is allowed. (and no credentials baked into the image)",
}
ORDER = tuple(SPEC)


@dataclass(frozen=True)
class Result:
    check: str
    verdict: str
    evidence: str

    @property
    def spec(self) -> str:
        return SPEC[self.check]

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "spec": self.spec}


def one_line(text: str, limit: int = 400) -> str:
    """Evidence is one table cell: newlines folded, length bounded."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


PROGRESS_PREFIX = "maserve check"  # `maserve batch` reuses the targets and says its own name


def progress(message: str) -> None:
    """Long checks say what they are doing on stderr; stdout stays the report."""
    print(f"{PROGRESS_PREFIX}: {message}", file=sys.stderr, flush=True)
