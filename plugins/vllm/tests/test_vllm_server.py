"""`tuneforge deploy --engine vllm`: the same server, endpoints and errors as with the pt engine."""

import json
import time

import httpx
import openai
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; the README's test command runs these tests in .venv-vllm")

from tuneforge.testing import make_lora_adapter
from tuneforge.testing.server import Server

BASE = "tiny"


@pytest.fixture(scope="module")
def server(vllm_tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-server")
    adapter = make_lora_adapter(vllm_tiny_dir, root / "minutes", seed=1, run_record=True)
    args = [
        "--model", vllm_tiny_dir, "--engine", "vllm", "--served-model-name", BASE, "--adapters", f"minutes={adapter}",
        "--engine-option", "max_model_len=1024", "--engine-option", "enforce_eager=true", "--engine-option", "enable_lora=true",
        "--max-tokens", "16",
    ]
    running = Server(args, root / "server.log", api_key="k", timeout=600)
    yield running
    assert running.stop() == 0, running.tail()


def chat(client, text, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    kw.setdefault("model", BASE)
    return client.chat.completions.create(messages=[{"role": "user", "content": text}], **kw)


def test_chat_stream_and_completions(server):
    client = server.client()
    assert [m.id for m in client.models.list().data] == [BASE, "minutes"]
    answer = chat(client, "Name three colours.")
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 8
    chunks = list(chat(client, "Name three colours.", stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 8
    text = client.completions.create(model=BASE, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 5
    several = chat(client, "hi", n=2, temperature=1.0, seed=7)
    assert len(several.choices) == 2


def test_adapters_by_name(server):
    client = server.client()
    base = chat(client, "Tell me about Vienna.").choices[0].message.content
    adapted = chat(client, "Tell me about Vienna.", model="minutes").choices[0].message.content
    assert adapted != base


def test_errors_have_the_openai_shape(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        chat(client, "hi", model="nope")
    with pytest.raises(openai.BadRequestError, match="context"):
        chat(client, "hello " * 2000)
    with pytest.raises(openai.BadRequestError, match="lower max_tokens"):
        chat(client, "hi", max_tokens=5000)
    response = httpx.post(server.url + "/v1/chat/completions", content="{not json", headers=server.headers(), timeout=30)
    assert response.status_code == 400 and json.loads(response.text)["error"]["param"] == "body"
    assert chat(client, "hi").choices  # still serving


def test_a_client_that_leaves_a_plain_request_stops_its_generation(server):
    body = {"model": BASE, "prompt": "Once upon a time", "max_tokens": 900, "temperature": 0}
    start = time.monotonic()
    whole = httpx.post(server.url + "/v1/completions", json=body, headers=server.headers(), timeout=120).json()
    whole_s = time.monotonic() - start
    assert whole["usage"]["completion_tokens"] == 900  # the model does not stop on its own
    before = httpx.get(server.url + "/health", headers=server.headers(), timeout=10).json()["engine"]

    with pytest.raises(httpx.ReadTimeout):  # the client gives up early and closes its connection
        httpx.post(server.url + "/v1/completions", json=body, headers=server.headers(), timeout=httpx.Timeout(60, read=min(0.3, whole_s / 4)))
    time.sleep(whole_s + 1)  # long enough for the whole answer to have been generated and counted, had it run on
    after = httpx.get(server.url + "/health", headers=server.headers(), timeout=10).json()
    assert after["requests_in_flight"] == 0
    assert after["engine"]["requests"] == before["requests"], (before, after["engine"])  # aborted: no answer was completed
    assert after["engine"]["tokens_generated"] == before["tokens_generated"]
    assert "A client left before its answer; its generation was stopped." in server.tail()
    assert chat(server.client(), "hi").usage.completion_tokens == 8  # still serving
