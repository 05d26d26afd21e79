"""The prediction page (maserve.page): its files and setting in process, then the page itself in a
real browser (Playwright driving Debian's Chromium, headless), used the way a person would: a
sample upload, a digit drawn with the mouse, a bad value in the iris form, a streamed chat.

Chromium comes from `apt-get install chromium` (Playwright's own browser download cannot work
here); without it the browser tests skip, except in CI (`CI` set), where they fail. Each browser
test saves a screenshot under its tmp dir (kept as a CI artifact); MASERVE_UPDATE_SCREENSHOT=1
also writes the README's docs/page.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

from helpers import FIXTURE_MODELS, MASERVE_BIN, MNIST_DIR, ROOT, Server, free_port, mnist_model_present, start_server

from maserve.app import MaserveApp
from maserve.config import load_config
from maserve.settings import Settings, SettingsError

IRIS_DIR = ROOT / "examples" / "iris"
CHAT_DIR = ROOT / "examples" / "chat"
STREAM_DIR = FIXTURE_MODELS / "stream"  # events as slow as asked, and a failure mid-stream
MULTI_DIR = FIXTURE_MODELS / "multi"  # a multipart form of every field type; claims /openapi.json
PAGE = "/_maserve/"
CHROMIUM = Path(os.environ.get("MASERVE_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = ROOT / "docs" / "page.png"
# What Chromium logs for a fetch answered 4xx/5xx: expected where a test sends a bad request on purpose.
FAILED_RESOURCE = re.compile(r"Failed to load resource: the server responded with a status of (\d{3}) .*")


# -- in process: the page's files, headers and setting -------------------------------------------
def make_app(model_dir: Path, **env: str) -> MaserveApp:
    settings = Settings.load(env={"MASERVE_MODEL_DIR": str(model_dir), "MASERVE_WORKERS": "1", **env})
    return MaserveApp(settings, load_config(model_dir / "config.json"), lambda: None)  # no model: not called


def get(app: MaserveApp, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI app (the page needs no model, so no lifespan)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def page_data(body: bytes) -> dict[str, Any]:
    found = re.search(rb'<script id="maserve-data" type="application/json">(.*?)</script>', body, re.S)
    assert found, body[:500]
    return json.loads(found.group(1))


def test_the_page_its_script_and_samples_are_served_with_their_types() -> None:
    app = make_app(MNIST_DIR)
    status, headers, body = get(app, PAGE)
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-request-id"]
    data = page_data(body)
    assert [api["key"] for api in data["apis"]] == ["POST /", "WEBSOCKET /ws"]
    assert data["facts"]["workers"] == 1 and data["health_url"] == "/health" and data["openapi_url"] == "/openapi.json"
    seven = next(s for s in data["apis"][0]["samples"] if s["name"] == "seven.jpg")
    assert seven == {"name": "seven.jpg", "expected": {"mnist_result": 7}, "file": True, "url": f"{PAGE}samples/seven.jpg"}
    for path, ctype in (("page.js", "text/javascript"), ("page.css", "text/css"), ("samples/seven.jpg", "image/jpeg")):
        status, headers, body = get(app, PAGE + path)
        assert status == 200 and headers["content-type"].startswith(ctype) and body, path
    assert get(app, f"{PAGE}samples/seven.jpg")[2] == (MNIST_DIR / "samples" / "seven.jpg").read_bytes()
    status, headers, body = get(app, PAGE, "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000


def test_only_the_pages_own_files_are_served_and_errors_are_json() -> None:
    app = make_app(MNIST_DIR)
    for path in (f"{PAGE}samples/heldout.npz", f"{PAGE}samples/../config.json", f"{PAGE}samples/expected.json",
                 f"{PAGE}service.py", f"{PAGE}samples/", f"{PAGE}page.js/x"):
        status, headers, body = get(app, path)
        assert status == 404 and headers["content-type"] == "application/json", path
        assert json.loads(body)["error_code"] == "MASERVE.NOT_FOUND", path
    status, headers, body = get(app, PAGE, "POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert json.loads(body)["error_code"] == "MASERVE.METHOD_NOT_ALLOWED"
    status, headers, _ = get(app, PAGE.rstrip("/"))
    assert status == 308 and headers["location"] == PAGE
    assert get(app, "/health")[0] == 503  # the api's own paths are untouched (no model loaded here)


def test_an_empty_page_path_serves_no_page_as_in_the_built_image() -> None:
    assert Settings.load(env={"MASERVE_MODEL_DIR": str(MNIST_DIR)}).page_path == PAGE  # `maserve serve`, `make run`
    app = make_app(MNIST_DIR, MASERVE_PAGE_PATH="")
    status, _, body = get(app, PAGE)
    assert status == 404 and json.loads(body)["error_code"] == "MASERVE.NOT_FOUND"
    # The image's Dockerfile sets it empty: ModelArts routes every path to the image.
    dockerfile = (ROOT / "src" / "maserve" / "image" / "Dockerfile").read_text()
    env_block = dockerfile[dockerfile.index("\nENV "):].split("\nUSER ")[0]
    assert re.search(r"^\s*MASERVE_PAGE_PATH=\s*$", env_block, re.M), env_block


def test_another_page_path_moves_the_page() -> None:
    app = make_app(IRIS_DIR, MASERVE_PAGE_PATH="/try")
    assert get(app, "/try/")[0] == 200 and get(app, "/try")[1]["location"] == "/try/"
    assert get(app, PAGE)[0] == 404
    assert page_data(get(app, "/try/")[2])["apis"][0]["samples"][0]["url"] == "/try/samples/request.json"


@pytest.mark.parametrize("env, named", [
    ({"MASERVE_PAGE_PATH": "/ws"}, "/ws"),
    ({"MASERVE_PAGE_PATH": "/health/"}, "/health"),
    ({"MASERVE_PAGE_PATH": "/openapi.json"}, "/openapi.json"),
    ({"MASERVE_PAGE_PATH": "/ops/", "MASERVE_METRICS_PATH": "/ops/metrics"}, "/ops/metrics"),
])
def test_a_page_path_the_service_answers_is_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=f"MASERVE_PAGE_PATH .* holds {re.escape(named)}, a path the service answers"):
        make_app(MNIST_DIR, **env)


@pytest.mark.parametrize("value", ["/", "page", "/a page/", "/p?x=1"])
def test_a_malformed_page_path_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="MASERVE_PAGE_PATH must be a path below /"):
        Settings.load(env={"MASERVE_MODEL_DIR": str(MNIST_DIR), "MASERVE_PAGE_PATH": value})


def test_maserve_serve_refuses_to_start_on_a_colliding_page_path() -> None:
    out = subprocess.run([str(MASERVE_BIN), "serve", str(MNIST_DIR), "--page-path", "/", "--port", str(free_port())],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "MASERVE_PAGE_PATH must be a path below /" in out.stdout + out.stderr
    out = subprocess.run([str(MASERVE_BIN), "serve", str(MNIST_DIR), "--port", str(free_port())],
                         env={**os.environ, "MASERVE_PAGE_PATH": "/ws/"}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "refusing to start: MASERVE_PAGE_PATH /ws/ holds /ws" in out.stdout + out.stderr


def test_config_text_cannot_break_out_of_the_page_and_nan_becomes_null(tmp_path: Path) -> None:
    config = json.loads((IRIS_DIR / "config.json").read_text())
    config["description"] = "</script><script>alert(1)</script> & <!--"
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "request.json").write_text('{"features": [1, 2, 3, 4]}')
    (tmp_path / "samples" / "expected.json").write_text('{"request.json": {"label": "setosa", "p": NaN}}')
    body = get(make_app(tmp_path), PAGE)[2]
    assert body.count(b"</script>") == 2 and b"<script>alert" not in body  # the page's own two tags
    data = page_data(body)
    assert data["model"]["description"] == config["description"]
    assert data["apis"][0]["samples"] == [{"name": "request.json", "expected": {"label": "setosa", "p": None},
                                          "file": True, "url": f"{PAGE}samples/request.json"}]


def test_without_expected_json_the_files_that_fit_are_offered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copy(MNIST_DIR / "config.json", tmp_path / "config.json")
    (tmp_path / "samples").mkdir()
    shutil.copy(MNIST_DIR / "samples" / "digit_3.png", tmp_path / "samples" / "three.png")
    (tmp_path / "samples" / "notes.txt").write_text("not an image")
    app = make_app(tmp_path)
    assert [s["name"] for s in page_data(get(app, PAGE)[2])["apis"][0]["samples"]] == ["three.png"]
    assert get(app, f"{PAGE}samples/notes.txt")[0] == 404
    (tmp_path / "samples" / "expected.json").write_text("{not json")  # said, and the files that fit offered
    assert [s["name"] for s in page_data(get(make_app(tmp_path), PAGE)[2])["apis"][0]["samples"]] == ["three.png"]
    assert "expected.json: not readable JSON" in caplog.text


# -- in a real browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright; skipped without it outside CI, failed in CI."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]')"
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the browser tests: {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


def start(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Server:
    return start_server(tmp_path_factory.mktemp(model_dir.name), model_dir, env={"MASERVE_WORKERS": "1"})


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not mnist_model_present():
        pytest.skip("the MNIST model is not trained (make train)")
    server = start(tmp_path_factory, MNIST_DIR)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory, IRIS_DIR)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory, CHAT_DIR)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory, MULTI_DIR)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory, STREAM_DIR)
    yield server
    server.stop()


class Visit:
    """One page in a fresh browser context: what it logged, failed on and asked the network for."""

    def __init__(self, browser: Any, server: Server, allowed: tuple[str, ...]) -> None:
        self.server = server
        self.allowed = allowed  # the paths (besides the page's own files) it may call
        self.context = browser.new_context(viewport={"width": 1100, "height": 900})
        self.page = self.context.new_page()
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.requests: list[str] = []
        self.sockets: list[str] = []
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("websocket", lambda ws: self.sockets.append(ws.url))
        self.page.set_default_timeout(30_000)
        self.page.goto(f"http://127.0.0.1:{server.port}{PAGE}")
        self.page.wait_for_selector("body[data-ready='1']")
        self.page.wait_for_selector("#health[data-health='ready']")

    def card(self, key: str) -> Any:
        return self.page.locator(f"section[data-api='{key}']")

    def screenshot(self, path: Path, full_page: bool = True) -> None:
        self.page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 1000

    def finish(self, bad_statuses: tuple[int, ...] = ()) -> None:
        """No script error; no console error but Chromium's line for each answer a test made fail on
        purpose; and every request an ordinary call: to this server, a page file or an api."""
        assert self.page_errors == []
        failed = [FAILED_RESOURCE.fullmatch(e) for e in self.console_errors]
        unexpected = [e for e, m in zip(self.console_errors, failed) if m is None or int(m.group(1)) not in bad_statuses]
        assert unexpected == []
        for url in self.requests + self.sockets:
            parts = urlsplit(url)
            if parts.scheme == "data":
                continue
            assert parts.hostname == "127.0.0.1" and parts.port == self.server.port, url
            assert parts.path.startswith(PAGE) or parts.path in self.allowed, url
        self.context.close()


def test_the_mnist_page_loads_with_the_servers_facts_and_no_console_error(browser, mnist, tmp_path) -> None:
    visit = Visit(browser, mnist, ("/health",))
    page = visit.page
    facts = {page.locator(f"[data-fact='{k}'] dd").inner_text() for k in ("workers", "grace", "keep-alive", "model")}
    assert facts == {"1", "0 s", "200 s", "mnist"}  # start_server: one worker, no grace
    assert page.locator("#health").inner_text() == "health: ready (200)"
    assert page.locator("#links a[href='/openapi.json']").count() == 1
    assert [page.locator("section.api h2").nth(i).inner_text() for i in range(2)] == ["POST /", "WebSocket /ws"]
    assert visit.card("POST /").locator("input[type=file][name=images]").count() == 1
    assert visit.card("POST /").locator("button.sample").count() == 11
    visit.screenshot(tmp_path / "mnist-loaded.png")
    assert visit.console_errors == [] and visit.page_errors == []
    visit.finish()


def test_a_sample_upload_shows_the_expected_answer(browser, mnist, tmp_path) -> None:
    visit = Visit(browser, mnist, ("/", "/health"))
    card = visit.card("POST /")
    card.locator("button.sample[data-sample='seven.jpg']").click()
    result = card.locator("> .result[data-status='200']")
    result.wait_for()
    assert result.locator(".big-value").inner_text() == "7"
    assert json.loads(result.locator("pre.json").inner_text()) == {"mnist_result": 7}
    assert result.locator(".expected.same").count() == 1
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]{8}", result.locator(".request-id").inner_text().split()[-1])
    assert re.fullmatch(r"\d+\.\d ms", result.locator(".latency").inner_text())
    assert card.locator("input[type=file]").evaluate("input => input.files[0].name") == "seven.jpg"
    visit.screenshot(tmp_path / "mnist-sample.png")
    visit.finish()


def draw_seven(page: Any, canvas: Any) -> None:
    """A 7 with the mouse: a bar, then the downstroke (pointer events from real mouse input)."""
    box = canvas.bounding_box()
    points = [(70, 60), (210, 60), (170, 140), (125, 235)]
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=12)
    page.mouse.up()


def test_a_digit_drawn_with_the_mouse_is_read_live_over_the_websocket(browser, mnist, tmp_path) -> None:
    visit = Visit(browser, mnist, ("/health", "/ws"))
    page, card = visit.page, visit.card("POST /")
    canvas = card.locator("canvas.draw")
    canvas.scroll_into_view_if_needed()
    draw_seven(page, canvas)
    card.locator(".draw-panel[data-state='idle'] .live[data-value]").wait_for()  # the whole stroke's answer
    assert card.locator(".live").inner_text() == "7"
    assert card.locator(".draw-answer .result .via").inner_text() == "WebSocket /ws"
    assert visit.sockets == [f"ws://127.0.0.1:{mnist.port}/ws"]
    visit.screenshot(tmp_path / "mnist-drawn.png")
    if os.environ.get("MASERVE_UPDATE_SCREENSHOT") == "1":  # the README's picture
        page.evaluate("window.scrollTo(0, 0)")
        visit.screenshot(SCREENSHOT, full_page=False)
    visit.finish()


def test_the_iris_form_with_a_bad_value_shows_the_servers_400(browser, iris, tmp_path) -> None:
    visit = Visit(browser, iris, ("/", "/health"))
    card = visit.card("POST /")
    editor = card.locator("textarea.json-editor")
    visit.page.wait_for_function("() => document.querySelector('textarea.json-editor').value.includes('6.3')")
    assert json.loads(editor.input_value()) == json.loads((IRIS_DIR / "samples" / "request.json").read_text())
    editor.fill('{"features": [6.3, 2.5, 4.9, 1000]}')
    card.locator("button.send").click()
    result = card.locator("> .result[data-status='400']")
    result.wait_for()
    assert result.locator(".status").inner_text() == "400 Bad Request"
    assert result.locator(".error-code").inner_text() == "MASERVE.INVALID_FIELD"
    assert "1000 is greater than the maximum of 100" in result.locator(".error-msg").inner_text()
    assert result.locator(".big").count() == 0
    visit.screenshot(tmp_path / "iris-400.png")
    visit.finish(bad_statuses=(400,))


def test_the_chat_is_streamed_into_a_chat_as_its_events_arrive(browser, chat, tmp_path) -> None:
    visit = Visit(browser, chat, ("/health", "/v1/chat/completions"))
    page, card = visit.page, visit.card("POST /v1/chat/completions")
    page.wait_for_function("() => document.querySelector('textarea.json-editor').value.includes('fables')")
    card.locator("textarea.chat-input").fill("Once upon a time, a Fox")
    card.locator("textarea.chat-input").press("Enter")
    card.locator(".bubble.assistant.done").wait_for(timeout=60_000)
    assert card.locator(".bubble.user .text").inner_text() == "Once upon a time, a Fox"
    reply = card.locator(".bubble.assistant .text").inner_text()
    assert reply.strip()
    stream = card.locator(".chat > .result.ended")
    assert stream.locator(".status").inner_text() == "200 OK · stream"
    events = [json.loads(text) if text.startswith("{") else text for text in stream.locator("li.event code").all_inner_texts()]
    assert len(events) > 3 and events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] > 0
    # the reply is the stream's deltas, put together as they came
    assert reply == "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2] if e["choices"])
    visit.screenshot(tmp_path / "chat.png")
    visit.finish()


def test_a_streams_events_show_as_they_arrive_and_its_error_event_with_its_code(browser, stream, tmp_path) -> None:
    visit = Visit(browser, stream, ("/health", "/stream"))
    page, card = visit.page, visit.card("POST /stream")
    card.locator("textarea.json-editor").fill('{"count": 4, "delay": 0.5, "fail_at": 3}')
    card.locator("button.send").click()
    # the first event is on the page while the stream still runs (the next one is 0.5 s away)
    page.wait_for_function("""() => {
        const result = document.querySelector("section[data-api='POST /stream'] > .result");
        return result.classList.contains("streaming") && result.querySelectorAll("li.event").length === 1;
    }""")
    result = card.locator("> .result.ended")
    result.wait_for()
    assert [json.loads(t)["index"] for t in result.locator("li.event:not(.error-event) code").all_inner_texts()] == [0, 1, 2]
    assert result.locator(".event-count").inner_text() == "4 events"
    assert result.locator(".error .error-code").inner_text() == "MASERVE.MODEL_ERROR"
    assert result.locator("li.error-event .name").inner_text() == "error"
    visit.screenshot(tmp_path / "stream-error.png")
    visit.finish()


def test_a_multipart_form_has_a_field_for_each_type_and_the_server_judges_its_values(browser, multi, tmp_path) -> None:
    visit = Visit(browser, multi, ("/health", "/upload"))
    page, card = visit.page, visit.card("POST /upload")
    assert page.locator("#links a[href='/openapi.json']").count() == 0  # config.json claims that path
    form = card.locator("form.fields")
    kinds = {name: form.locator(f"[name='{name}']").evaluate("e => e.type") for name in
             ("file", "repeat", "verbose", "ratio", "meta", "tags", "label")}
    assert kinds == {"file": "file", "repeat": "number", "verbose": "checkbox", "ratio": "number", "meta": "text",
                     "tags": "text", "label": "text"}
    repeat = form.locator("[name='repeat']")
    assert (repeat.get_attribute("min"), repeat.get_attribute("max"), repeat.input_value()) == ("1", "3", "1")
    assert "≤ 3" in form.locator("label.field:has([name='repeat']) .hint").inner_text()
    assert card.locator("canvas").count() == 0  # not an image model
    form.locator("[name='file']").set_input_files({"name": "blob.bin", "mimeType": "application/octet-stream",
                                                   "buffer": b"12345"})
    repeat.fill("2")
    form.locator("[name='verbose']").check()
    form.locator("[name='label']").fill("hello")
    card.locator("button.send").click()
    result = card.locator("> .result[data-status='200']")
    result.wait_for()
    answer = json.loads(result.locator("pre.json").inner_text())
    assert answer["size"] == 5 and answer["fields"] == {"repeat": 2, "verbose": True, "label": "hello"}
    repeat.fill("5")  # past the maximum: the browser would only mark it, the server refuses it
    card.locator("button.send").click()
    card.locator("> .result[data-status='400']").wait_for()
    assert card.locator("> .result .error-code").inner_text() == "MASERVE.INVALID_FIELD"
    assert "repeat" in card.locator("> .result .error-msg").inner_text()
    visit.screenshot(tmp_path / "multi-form.png")
    visit.finish(bad_statuses=(400,))
