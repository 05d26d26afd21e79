"""config.json loading and the start-up settings checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import MNIST_DIR
from maserve.config import MULTIPART, ConfigError, load_config
from maserve.settings import PLATFORM_MODEL_DIR, Settings, SettingsError


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def _mnist() -> dict:
    return json.loads((MNIST_DIR / "config.json").read_text())


def test_mnist_config_declares_the_reference_api() -> None:
    config = load_config(MNIST_DIR / "config.json")
    assert config.raw["model_algorithm"] == "image_classification"
    assert config.raw["model_type"] == "Image"
    api, live = config.apis
    assert (api.url, api.method, api.protocol) == ("/", "POST", "http")
    assert (live.url, live.protocol, live.websocket) == ("/ws", "ws", True)  # the same model over WebSocket
    assert api.request_content_type == MULTIPART
    assert api.file_fields == {"images"}
    assert api.response_schema["properties"]["mnist_result"]["type"] == "integer"
    assert config.health_url == "/health"
    health = config.raw["health"]
    for key in ("initial_delay_seconds", "timeout_seconds", "period_seconds", "failure_threshold"):
        assert int(health[key]) > 0
    assert 0.98 <= config.raw["metrics"]["accuracy"] <= 1.0


def test_platform_typos_are_accepted(tmp_path: Path) -> None:
    raw = _mnist()
    api = raw["apis"][0]
    api["procotol"] = api.pop("protocol")
    api["response"]["Content-type"] = "applicaton/json"
    config = load_config(_write(tmp_path, raw))
    assert config.apis[0].protocol == "http"
    assert config.apis[0].response_content_type == "application/json"
    assert [(w.level, w.path) for w in config.warnings] == [
        ("WARNING", "$.apis[0].procotol"),
        ("WARNING", "$.apis[0].response.Content-type"),
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.pop("model_algorithm"), "$.model_algorithm: required"),
        (lambda c: c.update(model_algorithm="1abc"), "$.model_algorithm"),
        (lambda c: c.update(model_algorithm="a" * 37), "$.model_algorithm"),
        (lambda c: c.update(model_algorithm="bad<name"), "$.model_algorithm"),
        (lambda c: c["apis"][0].update(protocol="ftp"), "$.apis[0].protocol"),
        (lambda c: c["apis"][0].update(url="predict"), "$.apis[0].url"),
        (lambda c: c["health"].pop("url"), "$.health.url: required"),
    ],
)
def test_invalid_configs_are_refused_with_the_json_path(tmp_path: Path, change, message: str) -> None:
    raw = _mnist()
    change(raw)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, raw))
    assert message in str(info.value)


def test_duplicate_routes_are_refused(tmp_path: Path) -> None:
    raw = _mnist()
    raw["apis"].append(dict(raw["apis"][0], method="POST"))
    with pytest.raises(ConfigError, match="two apis entries declare POST /"):
        load_config(_write(tmp_path, raw))


def test_unreadable_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")


def test_settings_defaults_follow_the_platform(tmp_path: Path) -> None:
    settings = Settings.load(env={"MASERVE_MODEL_DIR": str(tmp_path)})
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.keepalive_seconds == 200
    assert settings.grace_seconds == 60
    assert settings.grace_seconds + settings.drain_seconds < 90
    assert settings.max_body_bytes == 12 * 1024 * 1024
    assert settings.request_timeout_seconds == 60
    assert settings.log_format == "json"
    assert settings.workers >= 1


def test_cli_flags_override_environment(tmp_path: Path) -> None:
    env = {"MASERVE_MODEL_DIR": str(tmp_path), "MASERVE_PORT": "9000", "MASERVE_WORKERS": "3"}
    settings = Settings.load(env=env, overrides={"port": 9100, "workers": None})
    assert settings.port == 9100
    assert settings.workers == 3


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MASERVE_GRACE_SECONDS": "70"}, "could exceed ModelArts' 90 s bound"),
        ({"MASERVE_GRACE_SECONDS": "60", "MASERVE_DRAIN_SECONDS": "30"}, "MASERVE_DRAIN_SECONDS"),
        ({"MASERVE_PORT": "http"}, "MASERVE_PORT must be a number"),
        ({"MASERVE_LOG_FORMAT": "xml"}, "MASERVE_LOG_FORMAT"),
        ({"MASERVE_WORKERS": "0"}, "MASERVE_WORKERS"),
        ({"MASERVE_TLS_CERT": "/nonexistent.pem"}, "given together"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, env: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.load(env={"MASERVE_MODEL_DIR": str(tmp_path), **env})


def test_intra_op_threads_fill_the_cores_left_to_each_worker(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    load = lambda **env: Settings.load(env={"MASERVE_MODEL_DIR": str(tmp_path), **env})  # noqa: E731
    assert load().threads_per_worker == 1  # a worker per core
    assert load(MASERVE_WORKERS="1").threads_per_worker == cores  # one worker: every core
    assert load(MASERVE_WORKERS=str(cores * 2)).threads_per_worker == 1
    assert load(MASERVE_WORKERS="1", MASERVE_INTRA_OP_THREADS="3").threads_per_worker == 3
    # One worker running a batch per core: one intra-op thread each.
    assert load(MASERVE_WORKERS="1", MASERVE_BATCH_THREADS=str(cores)).threads_per_worker == 1
    with pytest.raises(SettingsError, match="MASERVE_INTRA_OP_THREADS must not be negative"):
        load(MASERVE_INTRA_OP_THREADS="-1")
    for name, bad in (("MASERVE_MAX_BATCH_SIZE", "0"), ("MASERVE_BATCH_BUDGET_SECONDS", "-0.1"),
                      ("MASERVE_BATCH_THREADS", "0")):
        with pytest.raises(SettingsError, match=name):
            load(**{name: bad})


def test_model_dir_defaults_to_the_bundled_example_outside_modelarts() -> None:
    settings = Settings.load(env={})
    if PLATFORM_MODEL_DIR.is_dir():
        assert settings.model_dir == PLATFORM_MODEL_DIR
    else:
        assert settings.model_dir == MNIST_DIR.resolve()
