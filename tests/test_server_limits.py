"""`tuneforge deploy`'s request-level safety, against real server processes: size limits, the rules without an
API key (Content-Type, Host, the admin endpoint), where the key comes from, and bounds on the work one request asks for."""

import os
import statistics
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tuneforge.testing.server import Server

SMALL_BODY = 256 * 1024  # --max-request-bytes of the `server` fixture
CONTEXT = 4096  # the tiny models' context; 32 characters a token of it: 131072


def user(text):
    return [{"role": "user", "content": text}]


def assert_openai_error(response, status, *, param=None, code=None, contains=""):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and contains in error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.fixture(scope="module")
def model_dir(tiny_llama_dir, tmp_path_factory):
    # Under a name of its own, to see that the API shows the name and not the path.
    link = tmp_path_factory.mktemp("models") / "secret-place" / "tiny-chat"
    link.parent.mkdir()
    link.symlink_to(tiny_llama_dir)
    return link


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """No API key; small limits so the tests stay fast."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    args = ["--model", model_dir, "--max-tokens", "8", "--max-request-bytes", SMALL_BODY, "--max-n", "4", "--max-choices", "8",
            "--max-tokens-limit", "64", "--allowed-hosts", "models.internal"]
    running = Server(args, log)
    yield running
    assert running.stop() == 0, running.tail()


def post(server, path, body, **headers):
    return httpx.post(server.url + path, json=body, headers=headers, timeout=60)


# -- sizes ------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_from_its_content_length(server):
    before = server.rss_mib()
    body = b'{"prompt": "' + b"a" * (8 * SMALL_BODY) + b'"}'
    response = httpx.post(server.url + "/v1/completions", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert_openai_error(response, 413, param="body", code="request_too_large", contains="--max-request-bytes")
    assert server.rss_mib() - before < 64
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_chunked_body_is_cut_at_the_limit_and_never_held_whole(server):
    before = server.rss_mib()
    sent = []

    def chunks():  # no Content-Length: the server only learns the size while reading
        for _ in range(512):  # 32 MiB in all
            sent.append(1)
            yield b"a" * 65536

    response = httpx.post(server.url + "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}, timeout=120)
    assert_openai_error(response, 413, param="body", code="request_too_large")
    assert len(sent) > SMALL_BODY // 65536  # it really was past the limit
    # 32 MiB went by; the server kept none of it beyond the limit.
    assert server.rss_mib() - before < 64
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_prompt_too_long_for_the_context_is_refused_by_its_characters(server):
    text = "hello " * 25_000  # 150,000 characters: more than 32 a token of 4096, under the body limit
    response = post(server, "/v1/chat/completions", {"messages": user(text), "max_tokens": 2})
    assert_openai_error(response, 400, param="messages", code="context_length_exceeded", contains="characters, more than 32 for each of the 4096 tokens")
    response = post(server, "/v1/chat/completions", {"messages": user("hi"), "tools": [{"type": "function", "function": {"name": "f", "description": text}}]})
    assert_openai_error(response, 400, param="tools", code="context_length_exceeded")
    response = post(server, "/v1/completions", {"prompt": ["hi", text], "max_tokens": 2})
    assert_openai_error(response, 400, param="prompt", code="context_length_exceeded")
    # Just under that, the tokenizer decides.
    response = post(server, "/v1/completions", {"prompt": "hello " * 20_000, "max_tokens": 2})
    assert_openai_error(response, 400, code="context_length_exceeded", contains="context is 4096")


def test_others_are_served_as_fast_while_someone_sends_oversized_requests(tiny_llama_dir, tmp_path):
    """A model with a long context (131072 tokens), default limits: the 4 MiB body limit binds first.

    One client sends bodies over the limit (with and without a Content-Length) and
    prompts just under it (3.5 million characters, tokenized in full and then
    refused for the context); another's short requests must keep their latency.
    """
    from tuneforge.testing import tiny_model_dir

    long_dir = tiny_model_dir(tmp_path / "long", tokenizer_dir=tiny_llama_dir, max_position_embeddings=131072)
    running = Server(["--model", long_dir, "--max-tokens", "4"], tmp_path / "server.log")
    try:
        body = {"messages": user("hi"), "max_tokens": 4, "temperature": 0}

        def victim(rounds):
            times = []
            with httpx.Client(base_url=running.url, timeout=120) as http:
                for _ in range(rounds):
                    start = time.monotonic()
                    response = http.post("/v1/chat/completions", json=body)
                    times.append(time.monotonic() - start)
                    assert response.status_code == 200, response.text
            return times

        victim(3)  # warm up
        baseline = victim(10)

        stop, refusals = threading.Event(), []

        def attacker():
            big = b'{"prompt": "' + b"a" * (6 << 20) + b'"}'
            long_prompt = {"prompt": "hello " * 580_000}  # 3.5 MB, 580,000 tokens
            with httpx.Client(base_url=running.url, timeout=300, headers={"Content-Type": "application/json"}) as http:
                while not stop.is_set():
                    refusals.append(http.post("/v1/completions", content=big).status_code)
                    refusals.append(http.post("/v1/completions", content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)])).status_code)
                    response = http.post("/v1/completions", json=long_prompt)
                    refusals.append(response.status_code)
                    assert response.status_code != 400 or "context is 131072" in response.json()["error"]["message"]

        thread = threading.Thread(target=attacker)
        thread.start()
        try:
            time.sleep(1.0)
            loaded = victim(20)
        finally:
            stop.set()
            thread.join(300)
        print(f"latency (s): baseline median {statistics.median(baseline):.3f} max {max(baseline):.3f}; "
              f"under attack median {statistics.median(loaded):.3f} max {max(loaded):.3f}; refusals {len(refusals)}")
        assert refusals and set(refusals) <= {400, 413} and 413 in refusals and 400 in refusals
        # Generous: the attacker's tokenizing uses a core of two, so some slowdown is fair;
        # a lock shared with it (or a body read in full) made it seconds per request.
        assert statistics.median(loaded) < 3 * statistics.median(baseline) + 0.5
        assert statistics.quantiles(loaded, n=10)[-1] < 5 * statistics.median(baseline) + 1.5
        assert httpx.get(running.url + "/health").status_code == 200
    finally:
        assert running.stop() == 0, running.tail()


@pytest.mark.parametrize(
    "body, param, contains",
    [
        (b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content", "lone UTF-16 surrogate"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "user": "\\udfff"}', "user", "lone UTF-16 surrogate"),
        (b'{"messages": [{"role": "user", "content": "hi", "\\ud800": 1}]}', "messages[0].\\ud800", "The key"),
        (b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', "body", "not valid JSON"),  # a surrogate encoded raw
        ('{"messages": [{"role": "user", "content": "hi"}]}'.encode("utf-16"), "body", "not valid JSON"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "tools": ' + b"[" * 80 + b"]" * 80 + b"}", "tools", "deeper than 64"),
        (b"[" * 50_000 + b"]" * 50_000, "body", "deeper than 64"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"7" * 5000 + b"}", "body", "4300 digits"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"7" * 4000 + b"}", "seed", "64-bit"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature", "from 0 to 2"),
    ],
)
def test_json_python_or_a_tokenizer_cannot_take_is_a_400_naming_where(server, body, param, contains):
    response = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert_openai_error(response, 400, param=param, contains=contains)


# -- without an API key -------------------------------------------------------------------


def test_posts_must_be_json(server):
    body = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": content_type} if content_type else {}
        response = httpx.post(server.url + "/v1/chat/completions", content=body, headers=headers)
        assert_openai_error(response, 415, code="unsupported_media_type", contains="application/json")
    ok = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert ok.status_code == 200, ok.text


def test_only_the_servers_own_host_names_are_answered(server):
    body = {"messages": user("hi"), "max_tokens": 2}
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.nip.io", "localhost.evil.example"):
        for response in (post(server, "/v1/chat/completions", body, Host=host), httpx.get(server.url + "/v1/models", headers={"Host": host})):
            assert_openai_error(response, 400, code="invalid_host", contains="--allowed-hosts")
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "LOCALHOST", "[::1]", "10.1.2.3:80", "models.internal", f"models.internal.:{server.port}"):
        assert post(server, "/v1/chat/completions", body, Host=host).status_code == 200, host


def test_the_admin_endpoint_is_off_without_a_key(server):
    response = post(server, "/v1/admin/adapters", {"name": "x", "path": "/etc"})
    error = assert_openai_error(response, 403, code="admin_disabled", contains="--allow-admin-without-key")
    assert error["type"] == "permission_error"
    assert "/etc" not in response.text


def test_health_and_models_show_no_path(server, model_dir):
    health = httpx.get(server.url + "/health")
    models = httpx.get(server.url + "/v1/models")
    assert health.json()["model"] == "tiny-chat" and [m["id"] for m in models.json()["data"]] == ["tiny-chat"]
    for response in (health, models):
        assert "secret-place" not in response.text and str(model_dir.parent) not in response.text


# -- bounds on one request's work -----------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, param, contains",
    [
        ("/v1/chat/completions", {"messages": user("hi"), "n": 5}, "n", "from 1 to 4"),
        ("/v1/chat/completions", {"messages": user("hi"), "max_tokens": 65}, "max_tokens", "--max-tokens-limit"),
        ("/v1/chat/completions", {"messages": user("hi"), "max_completion_tokens": 10**30}, "max_completion_tokens", "at most 64"),
        ("/v1/completions", {"prompt": ["hi"] * 9}, "prompt", "at most 8"),
        ("/v1/completions", {"prompt": ["hi"] * 3, "n": 3}, "n", "--max-choices"),
        ("/v1/completions", {"prompt": "hi", "seed": 2**64}, "seed", "64-bit"),
        ("/v1/completions", {"prompt": "hi", "repetition_penalty": 1e-300}, "repetition_penalty", "from 0.01"),
        ("/v1/completions", {"prompt": "hi", "top_k": 2**40}, "top_k", "integer"),
    ],
)
def test_work_beyond_the_servers_limits_is_a_400_naming_the_field(server, path, body, param, contains):
    assert_openai_error(post(server, path, body), 400, param=param, contains=contains)


def test_work_within_the_limits_is_served(server):
    two = post(server, "/v1/completions", {"prompt": ["hi", "ho"], "n": 4, "max_tokens": 64, "temperature": 1, "seed": 2**64 - 1})
    assert two.status_code == 200, two.text
    assert len(two.json()["choices"]) == 8
    # A temperature too small to divide by is greedy, not a NaN.
    greedy = post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 6, "temperature": 0})
    tiny = post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 6, "temperature": 1e-300})
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
    assert post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 4, "temperature": 1.5, "repetition_penalty": 0.01}).status_code == 200


# -- the API key's sources, and admin errors that say nothing of the server's files ----------------


def test_the_key_can_come_from_a_file(model_dir, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("file-key-42\n")
    running = Server(["--model", model_dir, "--api-key-file", key_file, "--max-tokens", "4"], tmp_path / "server.log")
    try:
        body = {"messages": user("hi"), "max_tokens": 2}
        assert_openai_error(post(running, "/v1/chat/completions", body), 401, code="invalid_api_key")
        assert post(running, "/v1/chat/completions", body, Authorization="Bearer file-key-42").status_code == 200
        # With a key, the admin endpoint is on, and its failures all read the same.
        existing_file, empty_dir = tmp_path / "key", tmp_path / "empty"
        empty_dir.mkdir()
        garbage = tmp_path / "garbage"
        garbage.mkdir()
        (garbage / "adapter_config.json").write_text("{not json")
        messages = set()
        for path in (tmp_path / "missing", existing_file, empty_dir, garbage, "/etc", "/proc/self", "\u0000x", "x" * 5000):
            response = post(running, "/v1/admin/adapters", {"name": "late", "path": str(path)}, Authorization="Bearer file-key-42")
            error = assert_openai_error(response, 400, param="path", code="adapter_not_loaded")
            messages.add(error["message"])
            assert str(tmp_path) not in response.text
        assert len(messages) == 1, messages
        assert "late" not in [m["id"] for m in httpx.get(running.url + "/v1/models", headers={"Authorization": "Bearer file-key-42"}).json()["data"]]
        running.tail()  # flushes the log
        assert "is not a directory" in running.log_path.read_text()  # the details are in the server's log
    finally:
        assert running.stop() == 0, running.tail()


def test_the_key_can_come_from_the_environment(model_dir, tmp_path):
    running = Server(["--model", model_dir, "--max-tokens", "4"], tmp_path / "server.log", env={"TUNEFORGE_API_KEY": "env-key-7"})
    try:
        body = {"messages": user("hi"), "max_tokens": 2}
        assert_openai_error(post(running, "/v1/chat/completions", body), 401)
        assert post(running, "/v1/chat/completions", body, Authorization="Bearer env-key-7").status_code == 200
        # With a key, neither the Host nor the Content-Type rule applies (a browser cannot send the key across sites).
        assert post(running, "/v1/chat/completions", body, Authorization="Bearer env-key-7", Host="models.example.com").status_code == 200
    finally:
        assert running.stop() == 0, running.tail()


def test_admin_without_a_key_needs_the_explicit_option(model_dir, tmp_path):
    running = Server(["--model", model_dir, "--allow-admin-without-key"], tmp_path / "server.log")
    try:
        response = post(running, "/v1/admin/adapters", {"name": "late", "path": str(tmp_path / "missing")})
        assert_openai_error(response, 400, code="adapter_not_loaded")
    finally:
        assert running.stop() == 0, running.tail()


def deploy_fails(args, env=None):
    """Run `tuneforge deploy` that must refuse before loading anything; its one-sentence error."""
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "deploy", *map(str, args)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, **(env or {})),
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return result.stderr


def test_bad_key_and_limit_options_are_one_sentence(model_dir, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("k\n")
    assert "give the key one way" in deploy_fails(["--model", model_dir, "--api-key", "k", "--api-key-file", key_file])
    assert "cannot be read" in deploy_fails(["--model", model_dir, "--api-key-file", tmp_path / "nope"])
    (tmp_path / "blank").write_text("\n")
    assert "holds no key" in deploy_fails(["--model", model_dir, "--api-key-file", tmp_path / "blank"])
    assert "TUNEFORGE_API_KEY is set but empty" in deploy_fails(["--model", model_dir], env={"TUNEFORGE_API_KEY": " "})
    assert "--max-request-bytes is 0" in deploy_fails(["--model", model_dir, "--max-request-bytes", "0"])
    assert "above --max-tokens-limit" in deploy_fails(["--model", model_dir, "--max-tokens", "100", "--max-tokens-limit", "50"])
    assert "--allowed-hosts" in deploy_fails(["--model", model_dir, "--allowed-hosts", "http://x/"])


# -- the pt engine's prompt tokenizers ------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_llama_dir):
    from tuneforge.inference import create_engine

    running = create_engine("pt", tiny_llama_dir, batch_size=2)
    yield running
    running.close()


def test_a_long_prompt_is_tokenized_without_the_decoding_lock(engine):
    from tuneforge.inference import ChatRequest
    from tuneforge.inference.text import prompt_ids

    short = ChatRequest(messages=user("Name three colours."))
    assert engine._prompt(short) == prompt_ids(engine.template, engine.tokenizer, short)  # the copies tokenize alike
    long = ChatRequest(prompt="hello " * 500_000)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (engine._prompt(long), done.set()))
    worker.start()
    try:
        time.sleep(0.05)
        start = time.monotonic()
        assert engine._text.lock.acquire(timeout=10)  # decoding can go on meanwhile
        waited = time.monotonic() - start
        engine._text.lock.release()
        print(f"decoding lock taken after {waited:.3f} s while a 3-million-character prompt was tokenized")
        assert not done.is_set() and waited < 0.5
    finally:
        worker.join(60)


def test_long_prompts_leave_a_tokenizer_copy_for_short_ones(engine):
    from tuneforge.inference import ChatRequest, SamplingParams

    release, held = threading.Event(), []

    def hold():
        with engine._prompts.take(long=True):
            held.append(1)
            release.wait(60)

    holders = [threading.Thread(target=hold) for _ in range(engine._prompts.size - 1)]
    for thread in holders:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(held) < len(holders) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(held) == len(holders)
        another_long = threading.Thread(target=engine._prompt, args=(ChatRequest(prompt="hello " * 5000),))
        another_long.start()
        # A short request is answered while every copy long prompts may use is taken...
        [[answer]] = engine.generate([ChatRequest(messages=user("hi"), sampling=SamplingParams(max_tokens=2))])
        assert answer.completion_tokens == 2
        # ... and another long prompt waits for one of them.
        another_long.join(0.5)
        assert another_long.is_alive()
    finally:
        release.set()
        for thread in holders:
            thread.join(30)
    another_long.join(30)
    assert not another_long.is_alive()
