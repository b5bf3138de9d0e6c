"""Fuzzing `tuneforge deploy`: hypothesis builds request bodies (every field, wrong types, odd unicode, sizes) for the
chat, completions and admin endpoints of a real server process.

Whatever comes in, the answer is a 200 (for a valid request) or a 4xx with OpenAI's error body, never a 500;
the server keeps answering /health, and its memory stays bounded. The examples are derandomized (the same on
every run) so that CI is stable; they take about a minute on two cores.
"""

import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.testing.server import Server

KEY = "fuzz-key"
BASE = "fuzz"
MAX_BODY = 64 * 1024

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("fuzz-server") / "server.log"
    args = ["--model", tiny_llama_dir, "--served-model-name", BASE, "--template", "chatml", "--allow-template-drift", "--max-tokens", "4", "--max-tokens-limit", "8",
            "--max-n", "2", "--max-choices", "4", "--max-request-bytes", MAX_BODY]
    running = Server(args, log, api_key=KEY)
    yield running
    assert running.stop() == 0, running.tail()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        yield client


# -- values ------------------------------------------------------------------------------------

ODD_TEXT = ["", " ", "\ud800", "a\udfffb", "\udc00\ud800", "\x00", "\u202e", "\ufeff", "\ufffd", "🙂", "e\u0301", "<|im_end|>",
            "<|im_start|>assistant\n", "<tool_call>", "</tool_call>", "{{ 1/0 }}", "{% for %}", "\\u0000", "null", "9" * 50]
chars = st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())  # surrogates included
texts = st.one_of(st.text(chars, max_size=24), st.sampled_from(ODD_TEXT))
big_texts = st.integers(1, 120_000).map(lambda n: "x" * n)  # some over the body limit
ints = st.one_of(st.integers(-3, 20), st.integers(), st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**300, -(10**4000)]))
floats = st.one_of(st.floats(), st.sampled_from([1e-300, 5e-324, 1e-45, 1e-6, -0.0, 0.0, 1.0, 2.0, 2.0000001, 1e308, math.inf, -math.inf, math.nan]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
any_json = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=12)


def maybe(strategy):
    """A field's value: mostly plausible, sometimes anything at all."""
    return st.one_of(strategy, strategy, any_json)


roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "", "USER", None])
parts = st.lists(st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), st.fixed_dictionaries({"type": texts, "text": any_json}), any_json), max_size=3)
call = st.fixed_dictionaries(
    {"function": maybe(st.fixed_dictionaries({"name": maybe(texts), "arguments": st.one_of(texts, any_json, st.just('{"city": "Vienna"}'))}))},
    optional={"id": maybe(texts), "type": maybe(st.just("function"))},
)
message = st.fixed_dictionaries(
    {"role": maybe(roles)},
    optional={"content": st.one_of(texts, big_texts, parts, any_json, st.none()), "tool_calls": maybe(st.lists(call, max_size=2)),
              "tool_call_id": maybe(texts), "name": maybe(texts), "function_call": any_json},
)
tool = st.fixed_dictionaries(
    {"type": maybe(st.just("function")),
     "function": maybe(st.fixed_dictionaries({"name": maybe(texts)}, optional={"description": maybe(texts), "parameters": any_json}))},
)
stops = st.one_of(texts, st.lists(texts, max_size=6))

SAMPLING = {
    "model": maybe(st.sampled_from([BASE, "nope", ""])),
    "max_tokens": maybe(st.integers(-2, 12)),
    "temperature": maybe(st.one_of(st.floats(0, 2.5), st.sampled_from([1e-300, 5e-324, 1e-8]))),
    "top_p": maybe(st.floats(-0.5, 1.5)),
    "top_k": maybe(st.integers(-2, 100)),
    "repetition_penalty": maybe(st.one_of(st.floats(0, 3), st.sampled_from([1e-300, 1e300, 0.01, 100.0]))),
    "presence_penalty": maybe(st.floats(-3, 3)),
    "frequency_penalty": maybe(st.floats(-3, 3)),
    "seed": maybe(ints),
    "n": maybe(st.integers(-1, 5)),
    "stop": maybe(stops),
    "stream": maybe(st.booleans()),
    "stream_options": maybe(st.fixed_dictionaries({}, optional={"include_usage": maybe(st.booleans())})),
    "user": maybe(texts),
    "logprobs": maybe(st.booleans()),
    "logit_bias": any_json,
}
CHAT = {
    **SAMPLING,
    "messages": maybe(st.lists(message, max_size=4)),
    "max_completion_tokens": maybe(st.integers(-1, 12)),
    "top_logprobs": any_json,
    "response_format": maybe(st.sampled_from([{"type": "text"}, {"type": "json_object"}])),
    "tools": maybe(st.lists(tool, max_size=3)),
    "tool_choice": maybe(st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "f"}}])),
    "parallel_tool_calls": maybe(st.booleans()),
    "chat_template_kwargs": maybe(st.dictionaries(st.sampled_from(["enable_thinking", "add_generation_prompt", "x"]), any_json, max_size=2)),
}
COMPLETION = {
    **SAMPLING,
    "prompt": maybe(st.one_of(texts, big_texts, st.lists(texts, max_size=6))),
    "echo": maybe(st.booleans()),
    "suffix": maybe(texts),
    "best_of": maybe(st.integers(-1, 3)),
}


# Valid requests, in all their variety: these must be 200s (or a 4xx the engine decides, such as a stop token in a prompt).
clean = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
VALID_SAMPLING = {
    "model": st.just(BASE),
    "max_tokens": st.integers(1, 8),
    "temperature": st.one_of(st.floats(0, 2), st.sampled_from([0, 1e-300, 5e-324, 2])),
    "top_p": st.floats(0.001, 1),
    "top_k": st.integers(0, 2**31 - 1),
    "repetition_penalty": st.floats(0.01, 100),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "seed": st.integers(-(2**63), 2**64 - 1),
    "n": st.integers(1, 2),
    "stop": st.one_of(clean, st.lists(clean, min_size=1, max_size=4)),
    "stream": st.booleans(),
    "user": clean,
}
valid_chat = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": clean}), min_size=1, max_size=3)},
    optional={**VALID_SAMPLING, "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries({"name": clean})}), max_size=2)},
)
valid_completion = st.fixed_dictionaries({"prompt": st.one_of(clean, st.lists(clean, min_size=1, max_size=2))}, optional=VALID_SAMPLING)
# Sizes around the limits: the body's (64 KiB: a 413) and the context's (4096 tokens: a 400 after tokenizing).
sizes = st.one_of(st.sampled_from([6_000, 30_000, 63_000, 66_000, 200_000]), st.integers(1_000, 200_000)).map(lambda n: "hello " * (n // 6))
big_chat = st.builds(lambda text, tools: {"messages": [{"role": "user", "content": text}], "max_tokens": 2, **tools}, sizes,
                     st.sampled_from([{}, {"tools": [{"type": "function", "function": {"name": "f", "description": "d " * 1000}}]}]))
big_completion = st.builds(lambda text, two: {"prompt": [text, "hi"] if two else text, "max_tokens": 2}, sizes, st.booleans())


def bodies(fields, required, valid, big):
    """Request bodies: valid ones, large ones, the endpoint's fields with any values (the required ones usually there),
    sometimes an unknown field, sometimes not an object."""
    optional = {k: v for k, v in fields.items() if k not in required}
    shaped = st.fixed_dictionaries({k: fields[k] for k in required}, optional=optional)
    loose = st.fixed_dictionaries({}, optional=fields)
    extra = st.tuples(shaped, st.dictionaries(texts, any_json, min_size=1, max_size=2)).map(lambda pair: {**pair[1], **pair[0]})
    return st.one_of(valid, valid, big, shaped, shaped, loose, extra, any_json)


# Bodies that are not JSON Python would take as it is: broken, too deep, numbers too long, lone surrogates.
RAW = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([
        b"", b"{", b"[" * 5000 + b"]" * 5000, b'{"messages": ' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"max_tokens": ' + b"9" * 5000 + b"}", b'{"seed": ' + b"9" * 4000 + b"}", b'{"prompt": "\\ud800"}',
        b'{"messages": [{"role": "user", "content": "\\udfff"}]}', b'{"\\ud800": 1}', b'{"prompt": "hi", "temperature": NaN}',
        b'{"prompt": "hi", "temperature": Infinity}', b'{"prompt": "hi", "max_tokens": 1e999}', b"\xff\xfe{}", b'"just a string"',
        b'{"prompt": "\xed\xa0\x80"}', b"null", '{"prompt": "\ud800"}'.encode("utf-16-le", "surrogatepass"), '{"prompt": "hi"}'.encode("utf-16"),
    ]),
    st.integers(1, 40).map(lambda depth: ('{"messages": [{"role": "user", "content": "hi"}], "tools": [' + '{"a": [' * depth + "1" + "]}" * depth + "]}").encode()),
)


# -- checks ------------------------------------------------------------------------------------


def check_answer(response: httpx.Response) -> None:
    """A 200, or a 4xx with OpenAI's error body; a stream ends with [DONE] and no server error."""
    assert response.status_code < 500, response.text[:2000]
    if response.status_code == 200:
        if response.headers["content-type"].startswith("text/event-stream"):
            events = [line for line in response.text.splitlines() if line]
            assert events[-1] == "data: [DONE]", events[-3:]
            for event in events[:-1]:
                data = json.loads(event[len("data: "):])
                assert "error" not in data or data["error"]["type"] != "server_error", data
        return
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)


def send(http, path, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # ensure_ascii: lone surrogates travel as \ud800
    return http.post(path, content=content, headers={"Content-Type": "application/json"})


def fuzz(server, http, path, strategy, examples=FUZZ):
    """Send every example of ``strategy`` to ``path``; check each answer, then the server's life and memory."""
    send(http, path, {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "max_tokens": 2})  # warm up
    before = server.rss_mib()
    statuses = []

    @examples
    @given(strategy)
    def one(body):
        response = send(http, path, body)
        statuses.append(response.status_code)
        check_answer(response)

    one()
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ok"
    grown = server.rss_mib() - before
    print(f"{path}: {len(statuses)} requests, statuses {sorted(set(statuses))}, RSS grew {grown:.0f} MiB")
    assert grown < 400, f"the server grew by {grown:.0f} MiB"
    return statuses


def test_chat_completions_never_fail_with_a_500(server, http):
    statuses = fuzz(server, http, "/v1/chat/completions", bodies(CHAT, ["messages"], valid_chat, big_chat))
    assert {200, 400} <= set(statuses)  # both kinds were reached


def test_completions_never_fail_with_a_500(server, http):
    statuses = fuzz(server, http, "/v1/completions", bodies(COMPLETION, ["prompt"], valid_completion, big_completion))
    assert {200, 400} <= set(statuses)


def test_admin_adapters_never_fail_with_a_500(server, http, tmp_path_factory):
    folder = tmp_path_factory.mktemp("not-an-adapter")
    (folder / "adapter_config.json").write_text('{"r": "eight", "peft_type": "LORA"}')
    paths = st.one_of(texts, st.sampled_from([str(folder), str(folder / "missing"), "/", ".", "~", "/dev/null", "\x00", "a" * 5000]), any_json)
    names = st.one_of(st.sampled_from(["late", BASE, "bad name", "", "a" * 500]), texts, any_json)
    admin = st.one_of(st.fixed_dictionaries({"name": names, "path": paths}), st.fixed_dictionaries({}, optional={"name": names, "path": paths, "x": any_json}), any_json)
    statuses = fuzz(server, http, "/v1/admin/adapters", admin)
    assert set(statuses) <= {400, 404, 413}, sorted(set(statuses))  # nothing there is an adapter that loads
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [BASE]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/admin/adapters"])
def test_raw_bodies_never_fail_with_a_500(server, http, path):
    fuzz(server, http, path, RAW, settings(FUZZ, max_examples=60))
