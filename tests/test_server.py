"""`tuneforge deploy`: a real server process on 127.0.0.1, called with the openai client and httpx."""

import asyncio
import json
import signal
import time

import httpx
import openai
import pytest

from tuneforge.testing import make_lora_adapter
from tuneforge.testing.server import Server

KEY = "test-key-123"
BASE = "tiny"
PROMPTS = ["hi", "Name three colours.", "What is two plus two?", "Tell me about Vienna."]


def user(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def adapters(varied_tiny_dir, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("adapters")
    return {
        "minutes": make_lora_adapter(varied_tiny_dir, root / "minutes-run", seed=1, run_record=True),
        "late": make_lora_adapter(varied_tiny_dir, root / "late-peft", seed=2, run_record=False),
    }


@pytest.fixture(scope="module")
def server(varied_tiny_dir, adapters, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    args = ["--model", varied_tiny_dir, "--served-model-name", BASE, "--adapters", f"minutes={adapters['minutes']}", "--max-tokens", "16"]
    running = Server(args, log, api_key=KEY)
    yield running
    assert running.stop() == 0, running.tail()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def chat(client, text, model=BASE, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=user(text), **kw)


def streamed(client, text, model=BASE, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    chunks = list(client.chat.completions.create(model=model, messages=user(text), stream=True, **kw))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return content, chunks


# -- the endpoints --------------------------------------------------------------------


def test_health_and_models(server, client):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # no key needed
    names = [m.id for m in client.models.list().data]
    assert names == [BASE, "minutes"]


def test_chat_completion_with_usage(client):
    answer = chat(client, "hi")
    assert answer.object == "chat.completion" and answer.model == BASE
    [choice] = answer.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert answer.usage.completion_tokens == 8
    assert answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 8
    assert chat(client, "hi").choices[0].message.content == choice.message.content  # greedy repeats


def test_stream_concatenates_to_the_greedy_text(client):
    for text in PROMPTS[:2]:
        whole = chat(client, text, max_tokens=12)
        content, chunks = streamed(client, text, max_tokens=12, stream_options={"include_usage": True})
        assert content == whole.choices[0].message.content
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finals == [whole.choices[0].finish_reason]
        assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
        assert all(c.usage is None for c in chunks[:-1])
    _, plain = streamed(client, "hi")
    assert all(c.usage is None for c in plain)  # usage only when asked for


def test_stream_ends_with_done(server):
    body = {"model": BASE, "messages": user("hi"), "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=server.headers(), timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"


def test_completions_continue_a_raw_prompt(client):
    whole = client.completions.create(model=BASE, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert whole.object == "text_completion"
    [choice] = whole.choices
    assert choice.text and choice.finish_reason == "length"
    assert whole.usage.completion_tokens == 6 and 0 < whole.usage.prompt_tokens < 10  # no chat template around it
    chunks = list(client.completions.create(model=BASE, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    chat_answer = chat(client, "Once upon a time", max_tokens=6).choices[0].message.content
    assert chat_answer != choice.text  # the chat endpoint wraps the text in the template
    two = client.completions.create(model=BASE, prompt=["Once upon a time", "hi"], max_tokens=6, temperature=0)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == choice.text


def test_n_and_seed(client):
    greedy = chat(client, "hi", n=2)
    assert [c.index for c in greedy.choices] == [0, 1]
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    assert greedy.usage.completion_tokens == 16
    sampled = [chat(client, "hi", n=2, temperature=1.0, seed=7, max_tokens=10) for _ in range(2)]
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]
    other = chat(client, "hi", n=2, temperature=1.0, seed=8, max_tokens=10)
    assert [c.message.content for c in other.choices] != [c.message.content for c in sampled[0].choices]
    streamed_n = list(client.chat.completions.create(model=BASE, messages=user("hi"), n=2, max_tokens=8, temperature=0, stream=True))
    texts = {0: "", 1: ""}
    for chunk in streamed_n:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: greedy.choices[0].message.content, 1: greedy.choices[1].message.content}


def test_stop_cuts_the_text(client):
    full = chat(client, "Name three colours.", max_tokens=16).choices[0].message.content
    word = full.split()[len(full.split()) // 2]
    cut = full[: full.find(word)]
    stopped = chat(client, "Name three colours.", max_tokens=16, stop=[word])
    assert stopped.choices[0].message.content == cut
    assert stopped.choices[0].finish_reason == "stop"
    content, _ = streamed(client, "Name three colours.", max_tokens=16, stop=word)
    assert content == cut


def test_a_client_that_leaves_a_stream_stops_its_generation(server, client):
    body = {"model": BASE, "messages": user("Tell me a long story."), "max_tokens": 3000, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=server.headers(), timeout=60) as response:
        next(line for line in response.iter_lines() if line)
    # leaving the block closed the connection mid-stream
    deadline = time.monotonic() + 60
    while "A client left its stream" not in server.tail() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "A client left its stream; its generation was stopped." in server.tail()
    assert chat(client, "hi").choices[0].finish_reason == "length"


# -- adapters ---------------------------------------------------------------------------


def test_adapters_are_chosen_by_model_name(client):
    base = [chat(client, p).choices[0].message.content for p in PROMPTS[:3]]
    adapted = [chat(client, p, model="minutes").choices[0].message.content for p in PROMPTS[:3]]
    assert adapted != base
    assert [chat(client, p).choices[0].message.content for p in PROMPTS[:3]] == base  # back to the base
    assert streamed(client, PROMPTS[0], model="minutes")[0] == adapted[0]


def test_an_adapter_is_added_at_runtime(server, client, adapters):
    body = {"name": "late", "path": str(adapters["late"])}
    refused = server.post("/v1/admin/adapters", body, key="wrong")
    assert refused.status_code == 401
    added = server.post("/v1/admin/adapters", body)
    assert added.status_code == 201, added.text
    assert added.json()["id"] == "late"
    assert "late" in [m.id for m in client.models.list().data]
    late = chat(client, PROMPTS[1], model="late").choices[0].message.content
    assert late != chat(client, PROMPTS[1]).choices[0].message.content
    assert late != chat(client, PROMPTS[1], model="minutes").choices[0].message.content
    again = server.post("/v1/admin/adapters", body)
    assert again.status_code == 400 and "already served" in again.json()["error"]["message"]
    missing = server.post("/v1/admin/adapters", {"name": "ghost", "path": str(adapters["late"]) + "-missing"})
    # One answer whatever the path holds: the client learns nothing about the server's files.
    assert missing.status_code == 400 and "could be loaded" in missing.json()["error"]["message"]
    assert str(adapters["late"]) not in missing.text and "directory" not in missing.text


# -- tool calls -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_server(tool_calling_tiny_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("tool-server") / "server.log"
    running = Server(["--model", tool_calling_tiny_dir, "--template", "chatml", "--allow-template-drift", "--served-model-name", BASE], log)
    yield running
    assert running.stop() == 0, running.tail()


def test_tool_calls_come_back_in_openai_shape(tool_server):
    from tuneforge.testing import WEATHER_CALL, WEATHER_TOOLS

    client = tool_server.client()
    answer = client.chat.completions.create(model=BASE, messages=WEATHER_CALL[:1], tools=WEATHER_TOOLS, temperature=0, max_tokens=60)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Vienna"}

    chunks = list(client.chat.completions.create(model=BASE, messages=WEATHER_CALL[:1], tools=WEATHER_TOOLS, temperature=0, max_tokens=60, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed_calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert "<tool_call>" not in text
    assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)) for tc in streamed_calls] == [(0, "get_weather", {"city": "Vienna"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # The call and its result go back in the history: the template renders both.
    history = WEATHER_CALL[:1] + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21})},
    ]
    follow_up = client.chat.completions.create(model=BASE, messages=history, tools=WEATHER_TOOLS, temperature=0, max_tokens=5)
    assert follow_up.usage.prompt_tokens > answer.usage.prompt_tokens
    # With tool_choice "none" the tools are not offered, and nothing is parsed.
    plain = client.chat.completions.create(model=BASE, messages=WEATHER_CALL[:1], tools=WEATHER_TOOLS, tool_choice="none", temperature=0, max_tokens=60)
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason != "tool_calls"


# -- refusals ---------------------------------------------------------------------------


def assert_openai_error(response, status, *, param=None, contains=""):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and contains in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_the_api_key_is_required(server):
    body = {"model": BASE, "messages": user("hi"), "max_tokens": 2}
    for key in (None, "wrong"):
        response = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"} if key else {})
        error = assert_openai_error(response, 401, contains="--api-key")
        assert error["type"] == "authentication_error"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


LONG = "hello " * 5000  # over the tiny model's 4096 tokens of context


@pytest.mark.parametrize(
    "path, body, status, param, contains",
    [
        ("/v1/chat/completions", {"model": "nope", "messages": user("hi")}, 404, "model", "'nope' does not exist"),
        ("/v1/chat/completions", "{not json", 400, "body", "not valid JSON"),
        ("/v1/chat/completions", [1, 2], 400, "body", "JSON object"),
        ("/v1/chat/completions", {"model": BASE, "messages": "hi"}, 400, "messages", "non-empty list"),
        ("/v1/chat/completions", {"model": BASE, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role", "robot"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "temperature": "hot"}, 400, "temperature", "'hot'"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "max_tokens": "5"}, 400, "max_tokens", "integer"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "max_tokens": 0}, 400, "max_tokens", "at least 1"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "n": 0}, 400, "n", "from 1"),
        ("/v1/chat/completions", {"model": BASE, "messages": user(LONG)}, 400, "messages", "context is 4096"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "max_tokens": 5000}, 400, "max_tokens", "lower max_tokens"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "logprobs": "yes"}, 400, "logprobs", "true or false"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "presence_penalty": 2.5}, 400, "presence_penalty", "from -2 to 2"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "tools": [{"name": "f"}]}, 400, "tools", "a list of"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "tool_choice": "required"}, 400, "tool_choice", "has no 'tools'"),
        ("/v1/chat/completions", {"model": BASE, "messages": [{"role": "user", "content": "hi", "tool_calls": []}]}, 400, "messages[0].tool_calls", "not 'assistant'"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "frobnicate": 1}, 400, "frobnicate", "Unrecognized"),
        ("/v1/chat/completions", {"model": BASE, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "reasoning_content": 5}]}, 400, "messages[1].reasoning_content", "a string"),
        ("/v1/chat/completions", {"model": BASE, "messages": [{"role": "user", "content": "hi", "reasoning_content": "x"}]}, 400, "messages[0].reasoning_content", "not 'assistant'"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "chat_template_kwargs": 5}, 400, "chat_template_kwargs", "an object"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "chat_template_kwargs": {"enable_thinking": False}}, 400, None, "takes no option 'enable_thinking'"),
        ("/v1/chat/completions", {"model": BASE, "messages": user("hi"), "stream_options": {"include_usage": True}}, 400, "stream_options", "'stream' is true"),
        ("/v1/completions", {"model": BASE, "prompt": 5}, 400, "prompt", "non-empty string"),
        ("/v1/completions", {"model": BASE, "prompt": LONG, "stream": True}, 400, "prompt", "context is 4096"),
        ("/v1/completions", {"model": BASE, "prompt": "hi", "echo": True}, 400, "echo", "does not support"),
        ("/v1/nothing", {}, 404, None, "no endpoint"),
    ],
)
def test_bad_requests_get_an_openai_error(server, path, body, status, param, contains):
    content = body if isinstance(body, str) else json.dumps(body)
    response = server.post(path, content=content)
    assert_openai_error(response, status, param=param, contains=contains)
    assert httpx.get(server.url + "/health").status_code == 200


def test_an_unset_max_tokens_shrinks_to_what_the_context_leaves(client):
    def prompt_tokens(k):
        return chat(client, "hello " * k, max_tokens=1).usage.prompt_tokens

    first, second = prompt_tokens(100), prompt_tokens(200)
    per_word = (second - first) / 100
    words = 100 + round((4096 - 5 - first) / per_word)
    answer = client.chat.completions.create(model=BASE, messages=user("hello " * words), temperature=0)
    room = 4096 - answer.usage.prompt_tokens
    assert 0 < room < 16  # the server's --max-tokens would not fit
    assert answer.usage.completion_tokens <= room
    with pytest.raises(openai.BadRequestError, match=f"at most {room}"):
        chat(client, "hello " * words, max_tokens=16)


def test_the_openai_client_sees_the_errors(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        chat(client, "hi", model="nope")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        chat(client, "hi", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="context"):
        chat(client, LONG)
    assert chat(client, "hi").choices  # still serving


# -- under load ---------------------------------------------------------------------------


def test_many_concurrent_streams_complete_while_health_answers(server, client):
    expected = {p: chat(client, p, max_tokens=4).choices[0].message.content for p in PROMPTS}
    before = httpx.get(server.url + "/health").json()["engine"]

    async def main():
        aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
        health: list[tuple[int, float]] = []
        done = asyncio.Event()

        async def one(i):
            prompt = PROMPTS[i % len(PROMPTS)]
            stream = await aclient.chat.completions.create(model=BASE, messages=user(prompt), max_tokens=4, temperature=0, stream=True)
            text, finish = "", None
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            return prompt, text, finish

        async def watch_health():
            async with httpx.AsyncClient(base_url=server.url) as http:
                for _ in range(3000):  # bounded: at most about a minute of polling
                    if done.is_set():
                        return
                    start = time.monotonic()
                    status = (await http.get("/health", timeout=10)).status_code
                    health.append((status, time.monotonic() - start))
                    await asyncio.sleep(0.02)  # often enough to poll several times even when the streams are quick

        watcher = asyncio.create_task(watch_health())
        try:
            results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(64))), timeout=300)
        finally:
            done.set()
            await watcher
            await aclient.close()
        return results, health

    results, health = asyncio.run(main())
    after = httpx.get(server.url + "/health").json()["engine"]
    assert len(results) == 64
    # The streams shared batches: far fewer generate() calls than requests.
    assert after["batches"] - before["batches"] <= 40, (before, after)
    assert after["largest_batch"] > 1
    for prompt, text, finish in results:
        assert text == expected[prompt] and finish in ("length", "stop")
    assert len(health) >= 3 and all(status == 200 for status, _ in health)
    assert max(seconds for _, seconds in health) < 5


# -- shutdown ---------------------------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish(varied_tiny_dir, tmp_path):
    running = Server(["--model", varied_tiny_dir, "--served-model-name", BASE, "--shutdown-timeout", "60"], tmp_path / "server.log")
    try:
        body = {"model": BASE, "messages": user("Tell me a long story."), "max_tokens": 1500, "temperature": 0, "stream": True}
        with httpx.stream("POST", running.url + "/v1/chat/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line)
            assert first.startswith("data: ")
            running.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            refused = httpx.get(running.url + "/health", timeout=10)
            assert_openai_error(refused, 503, contains="shutting down")
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        finishes = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in rest[:-1]]
        assert finishes[-1] in ("length", "stop") and all(f is None for f in finishes[:-1])
        assert running.process.wait(60) == 0, running.tail()
    finally:
        running.stop()
    assert "Application shutdown complete" in (tmp_path / "server.log").read_text()


# -- the real model -----------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2_dir, tmp_path):
    running = Server(["--model", smollm2_dir, "--served-model-name", "smollm2"], tmp_path / "server.log")
    try:
        answer = running.client().chat.completions.create(
            model="smollm2", messages=user("What is the capital of France?"), max_tokens=24, temperature=0
        )
        assert "Paris" in answer.choices[0].message.content
    finally:
        assert running.stop() == 0
