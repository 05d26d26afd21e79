"""examples/chat, the OpenAI-compatible generative example, served by a real server process and
driven by the official `openai` client, the `websockets` client and `maserve check`."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
import websockets

from helpers import ROOT, free_port, start_server
from test_check import run_check

CHAT_DIR = ROOT / "examples" / "chat"
PROMPT = [{"role": "system", "content": "You tell fables."}, {"role": "user", "content": "Once upon a time, a Fox"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("chat"), CHAT_DIR)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0, timeout=60)


def greedy(client: openai.OpenAI, **extra):
    return client.chat.completions.create(model="maserve-byte-gru", messages=PROMPT, max_tokens=40, temperature=0,
                                          **extra)


def test_models_list(client):
    assert [m.id for m in client.models.list()] == ["maserve-byte-gru"]


def test_a_completion_with_usage_and_greedy_decoding_repeats(client):
    first, second = greedy(client), greedy(client)
    choice = first.choices[0]
    assert first.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content and choice.message.content == second.choices[0].message.content
    usage = first.usage
    assert usage.completion_tokens <= 40 and usage.prompt_tokens > len("Once upon a time, a Fox")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # a byte-level model: completion tokens are the answer's UTF-8 bytes
    assert usage.completion_tokens == len(choice.message.content.encode())
    assert choice.finish_reason == ("length" if usage.completion_tokens == 40 else "stop")


def test_the_stream_carries_the_same_text_then_usage(client):
    whole = greedy(client).choices[0].message.content
    stream = greedy(client, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == whole
    assert chunks >= len(whole)  # token by token, not one buffered answer
    assert finish in ("stop", "length") and usage.completion_tokens == len(whole.encode())


def test_a_stop_string_ends_the_answer_before_it(client):
    whole = greedy(client).choices[0].message.content
    word = next(w for w in whole.split() if len(w) >= 3 and whole.index(w) > 0)
    cut = greedy(client, stop=[word]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == whole[: whole.index(word)]


def test_sampling_with_a_seed_repeats(client):
    runs = [client.chat.completions.create(model="x", messages=PROMPT, max_tokens=30, temperature=1.0, seed=11)
            for _ in range(2)]
    assert runs[0].choices[0].message.content == runs[1].choices[0].message.content


@pytest.mark.parametrize("extra, field", [({"max_tokens": 0}, "max_tokens"), ({"temperature": 5}, "temperature"),
                                          ({"messages": []}, "messages")])
def test_bad_requests_get_400_naming_the_field(client, extra, field):
    request = {"model": "x", "messages": PROMPT, "max_tokens": 5, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**request)
    assert caught.value.status_code == 400 and field in caught.value.body["error_msg"]


def test_a_prompt_over_the_context_limit_is_400_not_500(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "word " * 20_000}],
                                       max_tokens=5)
    assert caught.value.body["error_code"] == "MASERVE.PROMPT_TOO_LONG"
    assert "at most" in caught.value.body["error_msg"]


def test_tokens_stream_over_websocket_with_the_same_text(client, server):
    whole = greedy(client).choices[0].message.content
    request = {"messages": PROMPT, "max_tokens": 40, "temperature": 0, "stream": True}

    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/chat/ws") as ws:
            await ws.send(json.dumps(request))
            messages = []
            while (message := await ws.recv()) != "[DONE]":
                messages.append(json.loads(message))
            await ws.send(json.dumps({**request, "stream": False}))  # the same socket answers again
            return messages, json.loads(await ws.recv())

    messages, single = asyncio.run(asyncio.wait_for(go(), 60))
    text = "".join(m["choices"][0]["delta"].get("content", "") for m in messages if m["choices"])
    assert text == whole and len(messages) >= len(whole)
    assert messages[-1]["choices"] == [] and messages[-1]["usage"]["completion_tokens"] == len(whole.encode())
    assert single["object"] == "chat.completion" and single["choices"][0]["message"]["content"] == whole


def test_maserve_check_passes_the_chat_example_with_its_samples():
    port = free_port()
    env = {"MASERVE_MODEL_DIR": str(CHAT_DIR), "MASERVE_GRACE_SECONDS": "2", "MASERVE_PORT": str(port),
           "MASERVE_WORKERS": "1"}
    out = run_check("--cmd", "sh image/run.sh", "--port", str(port), "--grace", "2", "--keepalive-seconds", "1",
                    "--config", str(CHAT_DIR), "--json", env=env, timeout=180)
    found = {r["check"]: r for r in json.loads(out.stdout)["results"]}
    assert all(r["verdict"] == "PASS" for r in found.values()), out.stdout
    assert "1 answered with a stream" in found["apis"]["evidence"]
    assert "closed with 1001" in found["websocket"]["evidence"]
