"""`tuneforge deploy --engine lmdeploy`: the same server, endpoints and errors as with the pt engine, adapters by
name (plugins/lmdeploy/gpu_check.sh runs these on a CUDA GPU; elsewhere they skip)."""

import time

import httpx
import openai
import pytest

from tuneforge_lmdeploy.engine import why_not_runnable

pytestmark = pytest.mark.skipif(why_not_runnable() is not None, reason=str(why_not_runnable()))

from tuneforge.testing import make_lora_adapter  # noqa: E402
from tuneforge.testing.server import Server  # noqa: E402

BASE = "tiny"


@pytest.fixture(scope="module")
def server(lmdeploy_tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lmdeploy-server")
    adapter = make_lora_adapter(lmdeploy_tiny_dir, root / "minutes", seed=1, run_record=False)
    args = [
        "--model", lmdeploy_tiny_dir, "--engine", "lmdeploy", "--served-model-name", BASE, "--adapters", f"minutes={adapter}",
        "--engine-option", "session_len=1024", "--engine-option", "cache_max_entry_count=0.2", "--engine-option", "eager_mode=true", "--max-tokens", "16",
    ]
    running = Server(args, root / "server.log", api_key="k", timeout=600, env={"TUNEFORGE_LOAD_PLUGINS": "lmdeploy"})
    yield running
    assert running.stop() == 0, running.tail()


def chat(client, text, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    kw.setdefault("model", BASE)
    return client.chat.completions.create(messages=[{"role": "user", "content": text}], **kw)


def test_chat_stream_completions_and_adapters(server):
    client = server.client()
    assert [m.id for m in client.models.list().data] == [BASE, "minutes"]
    answer = chat(client, "Name three colours.")
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 8
    chunks = list(chat(client, "Name three colours.", stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    text = client.completions.create(model=BASE, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 5
    assert len(chat(client, "hi", n=2, temperature=1.0, seed=7).choices) == 2
    assert chat(client, "Tell me about Vienna.", model="minutes").choices[0].message.content != chat(client, "Tell me about Vienna.").choices[0].message.content


def test_errors_have_the_openai_shape_and_a_client_that_leaves_stops_its_generation(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        chat(client, "hi", model="nope")
    with pytest.raises(openai.BadRequestError, match="context"):
        chat(client, "hello " * 2000)
    body = {"model": BASE, "prompt": "Once upon a time", "max_tokens": 900, "temperature": 0}
    start = time.monotonic()
    whole = httpx.post(server.url + "/v1/completions", json=body, headers=server.headers(), timeout=120).json()
    whole_s = time.monotonic() - start
    assert whole["usage"]["completion_tokens"] == 900
    before = httpx.get(server.url + "/health", headers=server.headers(), timeout=10).json()["engine"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, headers=server.headers(), timeout=httpx.Timeout(60, read=min(0.3, whole_s / 4)))
    time.sleep(whole_s + 1)
    after = httpx.get(server.url + "/health", headers=server.headers(), timeout=10).json()
    assert after["requests_in_flight"] == 0 and after["engine"]["requests"] == before["requests"], (before, after)
    assert chat(client, "hi").usage.completion_tokens == 8  # still serving
