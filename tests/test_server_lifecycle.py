"""A request's life in `tuneforge deploy`: clients that leave, the shutdown deadline, what is counted in flight.

The server is a real subprocess (``tuneforge.testing.server.Server``), called with httpx
and stopped with real signals. Its model is a tiny random-weight Llama with a long
context, which does not stop early: a greedy answer of 8,000 tokens takes it several
seconds, long enough to leave, or to shut down, in the middle of one.
"""

import json
import signal
import socket
import threading
import time

import httpx
import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.inference import ChatRequest, SamplingParams, create_engine
from tuneforge.testing import tiny_model_dir
from tuneforge.testing.server import Server

BASE = "tiny"
PROMPT = "Once upon a time"
LONG_ANSWER = 8000  # tokens; the server's --max-tokens-limit allows it, the context (16384) too
CONTEXT = 16384


@pytest.fixture(scope="module")
def long_tiny_dir(tmp_path_factory, smollm2_dir):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-long"), tokenizer_dir=smollm2_dir, initializer_range=0.2, max_position_embeddings=CONTEXT)


@pytest.fixture(scope="module")
def server(long_tiny_dir, tmp_path_factory):
    running = Server(["--model", long_tiny_dir, "--served-model-name", BASE], tmp_path_factory.mktemp("server") / "server.log")
    yield running
    assert running.stop() == 0, running.tail()


def health(server) -> dict:
    return httpx.get(server.url + "/health", timeout=10).json()


def wait_for(condition, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def completion(prompt=PROMPT, max_tokens=LONG_ANSWER, **kw):
    return {"model": BASE, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **kw}


def chat(text=PROMPT, max_tokens=LONG_ANSWER, **kw):
    return {"model": BASE, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0, **kw}


def assert_openai_error(response, status, type_, code=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == type_
    if code is not None:
        assert error["code"] == code
    return error


# -- a client that leaves -------------------------------------------------------------------


def test_a_client_that_leaves_a_plain_request_stops_its_generation(server):
    # The model does not stop on its own within 2,000 tokens of this prompt...
    whole = httpx.post(server.url + "/v1/completions", json=completion(max_tokens=2000), timeout=120).json()
    assert whole["choices"][0]["finish_reason"] == "length" and whole["usage"]["completion_tokens"] == 2000
    before = health(server)["engine"]

    # ... so a request for 8,000 that stops far short of 2,000 was stopped by its client leaving.
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after a second and closes its connection
        httpx.post(server.url + "/v1/completions", json=completion(), timeout=httpx.Timeout(60, read=1.0))
    left = time.monotonic()
    after = wait_for(lambda: (stats := health(server)["engine"])["batches"] > before["batches"] and stats, what="the end of the batch")
    stopped_after = time.monotonic() - left
    generated = after["tokens_generated"] - before["tokens_generated"]
    assert 0 < generated < 2000, (before, after)
    assert stopped_after < 5, stopped_after  # the whole answer would take several seconds more
    assert "A client left before its answer; its generation was stopped." in server.tail()
    assert health(server)["requests_in_flight"] == 0
    again = httpx.post(server.url + "/v1/completions", json=completion(max_tokens=4), timeout=60)
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 4


# -- what is counted in flight ----------------------------------------------------------------


def test_health_does_not_count_itself_in_flight(server):
    assert health(server)["requests_in_flight"] == 0
    body = chat(stream=True)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()  # kept: a dropped iterator closes the response
        assert next(line for line in lines if line).startswith("data: ")
        assert health(server)["requests_in_flight"] == 1  # the stream, not the health check
    wait_for(lambda: health(server)["requests_in_flight"] == 0, what="the stream's end")


# -- context-length errors name the field ----------------------------------------------------------


def test_the_completions_context_error_names_the_prompt(server):
    long_prompt = "hello " * (CONTEXT + 500)
    for prompt, starts in ((long_prompt, "The prompt has"), (["hi", long_prompt], "Request 1: the prompt has")):
        response = httpx.post(server.url + "/v1/completions", json=completion(prompt, max_tokens=4), timeout=120)
        error = assert_openai_error(response, 400, "invalid_request_error", code="context_length_exceeded")
        assert error["param"] == "prompt" and error["message"].startswith(starts), error
    too_many = httpx.post(server.url + "/v1/completions", json=completion("hello " * (CONTEXT - 100), max_tokens=1000), timeout=120)
    assert assert_openai_error(too_many, 400, "invalid_request_error", code="context_length_exceeded")["param"] == "max_tokens"
    chat_error = httpx.post(server.url + "/v1/chat/completions", json=chat(long_prompt, max_tokens=4), timeout=120)
    assert assert_openai_error(chat_error, 400, "invalid_request_error", code="context_length_exceeded")["param"] == "messages"


# -- the shutdown deadline ------------------------------------------------------------------------


def test_the_shutdown_timeout_cuts_what_is_still_open(long_tiny_dir, tmp_path):
    """Three requests that would run for many seconds more: one streaming, two queued behind it."""
    running = Server(["--model", long_tiny_dir, "--served-model-name", BASE, "--batch-size", "1", "--shutdown-timeout", "3"], tmp_path / "server.log")
    answers: dict[str, httpx.Response] = {}

    def send(name, path, body):
        answers[name] = httpx.post(running.url + path, json=body, timeout=120)

    try:
        with httpx.stream("POST", running.url + "/v1/chat/completions", json=chat(stream=True), timeout=120) as streaming:
            lines = (line for line in streaming.iter_lines() if line)
            first = next(lines)
            queued = [
                threading.Thread(target=send, args=("plain", "/v1/chat/completions", chat())),
                threading.Thread(target=send, args=("stream", "/v1/completions", completion(stream=True))),
            ]
            for thread in queued:
                thread.start()
            wait_for(lambda: health(running)["requests_in_flight"] == 3, what="three requests in flight")
            signalled = time.monotonic()
            running.process.send_signal(signal.SIGTERM)
            rest = list(lines)
        returncode = running.process.wait(60)
        took = time.monotonic() - signalled
        for thread in queued:
            thread.join(60)
    finally:
        running.stop()
    log = (tmp_path / "server.log").read_text()
    assert returncode == 0, log[-4000:]
    assert took < 3 + 6, (took, log[-4000:])

    # The stream that had begun ends with an error event, then [DONE]: a body every client can parse.
    events = [first, *rest]
    assert all(line.startswith("data: ") for line in events), events[-3:]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][6:])["error"]
    assert error["type"] == "service_unavailable" and error["code"] == "shutting_down" and "shut down" in error["message"]
    chunks = [json.loads(line[6:]) for line in events[:-2]]
    assert len(chunks) > 2 and all(c["object"] == "chat.completion.chunk" and c["choices"][0]["finish_reason"] is None for c in chunks)
    # The requests still waiting for the engine get an OpenAI-shaped 503.
    for name in ("plain", "stream"):
        assert_openai_error(answers[name], 503, "service_unavailable", code="shutting_down")
    assert "The shutdown timeout (3 s) passed with 3 request(s) in flight" in log
    assert "Traceback" not in log and "Exception in thread" not in log, log[-4000:]
    assert "Application shutdown complete" in log


def test_a_second_signal_cuts_at_once(long_tiny_dir, tmp_path):
    running = Server(["--model", long_tiny_dir, "--served-model-name", BASE, "--shutdown-timeout", "600"], tmp_path / "server.log")
    try:
        with httpx.stream("POST", running.url + "/v1/completions", json=completion(stream=True), timeout=120) as streaming:
            lines = (line for line in streaming.iter_lines() if line)
            events = [next(lines)]
            running.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            signalled = time.monotonic()
            running.process.send_signal(signal.SIGTERM)
            events += list(lines)
        returncode = running.process.wait(60)
        took = time.monotonic() - signalled
    finally:
        running.stop()
    log = (tmp_path / "server.log").read_text()
    assert returncode == 0 and took < 6, (took, log[-4000:])
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["error"]["code"] == "shutting_down"
    assert "A second signal came with 1 request(s) in flight" in log


def test_a_request_still_arriving_at_the_end_gets_a_503_not_a_500(long_tiny_dir, tmp_path):
    running = Server(["--model", long_tiny_dir, "--served-model-name", BASE, "--shutdown-timeout", "1"], tmp_path / "server.log")
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=60) as sock:
            # A body announced as 100 bytes of which 9 arrive: the request never reaches the engine.
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"model\":")
            wait_for(lambda: health(running)["requests_in_flight"] == 1, what="the request in flight")
            running.process.send_signal(signal.SIGTERM)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        returncode = running.process.wait(60)
    finally:
        running.stop()
    head, _, body = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 503") and "content-type: application/json" in head.lower(), answer
    assert json.loads(body)["error"]["code"] == "shutting_down"
    assert returncode == 0


# -- the engine under the server -----------------------------------------------------------------------


def _in_thread(func, *args, **kwargs):
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = func(*args, **kwargs)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_generate_stops_when_its_cancel_is_set(long_tiny_dir, one_torch_thread):
    engine = create_engine("pt", long_tiny_dir, batch_size=2)
    try:
        request = ChatRequest(prompt=PROMPT, sampling=SamplingParams(max_tokens=LONG_ANSWER, temperature=0))
        cancel = threading.Event()
        thread, outcome = _in_thread(engine.generate, [request, request], cancel=cancel)
        wait_for(lambda: engine.scheduler.largest_batch > 0, what="the batch's start")
        time.sleep(0.5)
        cancel.set()
        thread.join(10)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), TuneforgeError) and "cancelled" in str(outcome["error"])
        assert 0 < engine.tokens_generated < LONG_ANSWER  # both rows stopped early
        [[answer]] = engine.generate([ChatRequest(prompt=PROMPT, sampling=SamplingParams(max_tokens=3, temperature=0))])
        assert answer.completion_tokens == 3  # the engine serves on
    finally:
        engine.close()


def test_closing_the_engine_stops_the_running_batch_and_wakes_waiting_streams(long_tiny_dir, one_torch_thread):
    engine = create_engine("pt", long_tiny_dir, batch_size=1)
    request = ChatRequest(prompt=PROMPT, sampling=SamplingParams(max_tokens=LONG_ANSWER, temperature=0))
    running, ran = _in_thread(engine.generate, [request])
    wait_for(lambda: engine.scheduler.largest_batch > 0, what="the batch's start")
    waiting, waited = _in_thread(lambda: list(engine.stream(request)))  # queued behind the running batch
    time.sleep(0.5)
    start = time.monotonic()
    engine.close()
    closed_in = time.monotonic() - start
    running.join(10)
    waiting.join(10)
    assert not running.is_alive() and not waiting.is_alive()
    assert closed_in < 5, closed_in  # the running batch had thousands of tokens to go
    assert "closed while the request ran" in str(ran.get("error"))
    assert "closed before the request ran" in str(waited.get("error"))


def test_a_test_server_whose_port_another_process_took_starts_again_on_another(tiny_llama_dir, tmp_path, monkeypatch):
    """The test harness's Server: free_port() lets the port go before deploy binds it; another test
    worker's server can take it in between (seen in CI: a health check answered by the other server)."""
    import http.server

    from tuneforge.testing import server as harness

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)  # holds the port handed out first, answers /health
    threading.Thread(target=other.serve_forever, daemon=True).start()
    taken = other.server_address[1]
    handed = iter([taken])
    monkeypatch.setattr(harness, "free_port", lambda real=harness.free_port: next(handed, None) or real())
    try:
        running = harness.Server(["--model", tiny_llama_dir], tmp_path / "server.log")
        try:
            assert running.port != taken and running.process.poll() is None
            assert httpx.get(running.url + "/v1/models", timeout=10).json()["data"]  # a tuneforge server answers there
        finally:
            assert running.stop() == 0, running.tail()
    finally:
        other.shutdown()
