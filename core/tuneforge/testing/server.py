"""A ``tuneforge deploy`` subprocess for tests: started on a free port of 127.0.0.1, stopped with SIGTERM.

Engine plugins use it to run the server tests against their engine::

    from tuneforge.testing.server import Server

    server = Server(["--model", model_dir, "--engine", "my-engine"], tmp_path / "server.log")
    client = server.client()   # the official openai client, pointed at the server
    ...
    assert server.stop() == 0

``module`` runs another module in place of ``tuneforge.cli`` (``python -m MODULE deploy ...``):
one that registers a plugin of the tests first, then runs tuneforge's command line.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PORT_ATTEMPTS = 3


class Server:
    """A `tuneforge deploy` subprocess; the log is kept to explain a failure."""

    def __init__(self, args, log_path: Path, *, api_key: str | None = None, timeout: float = 240, env: dict | None = None,
                 module: str = "tuneforge.cli"):
        self.api_key = api_key
        self.log_path = log_path
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
        deadline = time.monotonic() + timeout
        for _ in range(PORT_ATTEMPTS):
            # free_port() lets the port go before the server binds it, so another process (a server
            # of another test worker) can take it first: ours then fails to bind, and a health check
            # would be answered by the other one. The server counts as up only once its own log says
            # it listens; one that lost its port is started again on another.
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            command = [sys.executable, "-m", module, "deploy", *map(str, args), "--port", str(self.port)]
            if api_key:
                command += ["--api-key", api_key]
            self.log = open(log_path, "w")
            self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
            if self._wait_until_serving(deadline, timeout):
                return
        raise AssertionError(f"the server lost its port to another process {PORT_ATTEMPTS} times:\n{self.tail()}")

    def _wait_until_serving(self, deadline: float, timeout: float) -> bool:
        """True once this server listens and answers /health; False if another process held its port."""
        listening = f"running on {self.url} "
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = self.tail()
                if "address already in use" in text:
                    self.log.close()
                    return False
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{text}")
            if listening in self.log_path.read_text():
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"the server did not answer /health within {timeout}s:\n{self.tail()}")

    def tail(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()[-4000:]

    def rss_mib(self) -> float:
        """The server process's resident memory in MiB (Linux), to see that a request left none behind."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("the server's /proc status has no VmRSS line")

    def headers(self, key=None):
        key = key or self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none", max_retries=0, timeout=120, **kw)

    def post(self, path, body=None, *, content=None, key=None):
        return httpx.post(self.url + path, json=body, content=content, headers=self.headers(key), timeout=120)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()
        return self.process.returncode
