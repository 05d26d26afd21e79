from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import Server, start_server  # noqa: E402


@pytest.fixture(scope="module")
def mnist_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One MNIST server per test module, 2 workers, with a 1 MiB body limit to test 413 cheaply."""
    server = start_server(tmp_path_factory.mktemp("mnist"), env={"MASERVE_MAX_BODY_BYTES": str(1024 * 1024)})
    yield server
    server.stop()
