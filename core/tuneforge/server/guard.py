"""The checks every request passes before an endpoint sees it: its Host, its Content-Type, its size.

- The body is read here, at most ``max_request_bytes`` of it: a larger one is a
  413, refused from its ``Content-Length`` before anything is read, or as soon as
  a chunked body passes the limit; the endpoint then gets the body that was read.
- Without an API key, two more rules keep web pages the operator visits from
  calling the server through the browser. A POST must be ``application/json``
  (a page can send ``text/plain`` across sites without asking; JSON needs a
  CORS preflight, which this server never grants). And the ``Host`` header must
  be one the server answers to (a DNS-rebinding page reaches 127.0.0.1 under its
  own name): an IP address, ``localhost``, the address the server was started
  on, or a name given to ``--allowed-hosts`` (``*``: any). With a key, a page
  cannot send the ``Authorization`` header across sites, so neither rule is
  needed.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Iterable

from .errors import APIError

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024


def host_name(header: str) -> str:
    """The name in a Host header, without the port, lower case (``[::1]:8000`` gives ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header[1:]
    name, colon, port = header.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        header = name
    return header.rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """Which Host headers a server without an API key answers to."""

    def __init__(self, bound_host: str | None, allowed: Iterable[str] = ()) -> None:
        self.names = {"localhost"} | {host_name(name) for name in allowed if name != "*"}
        if bound_host:
            self.names.add(host_name(bound_host))
        self.any = "*" in allowed

    def allows(self, header: str | None) -> bool:
        if header is None or self.any:  # no Host header: HTTP/1.0, never a browser
            return True
        name = host_name(header)
        return name in self.names or _is_address(name)


class RequestGuard:
    """ASGI middleware: the Host and Content-Type rules (without an API key) and the body-size limit."""

    def __init__(self, app, state, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, hosts: HostCheck | None = None) -> None:
        self.app, self.state, self.max_bytes = app, state, max_request_bytes
        self.hosts = hosts or HostCheck(None)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        error = self._check_headers(scope, headers)
        if error is not None:
            await send_error(send, error)
            return
        body = await self._read_body(headers, receive)
        if isinstance(body, APIError):
            await send_error(send, body)
            return
        if body is None:  # the client left while sending
            return
        await self.app(scope, _replay(body, receive), send)

    def _check_headers(self, scope, headers: dict) -> APIError | None:
        if self.state.api_key:
            return None
        if not self.hosts.allows(headers.get("host")):
            shown = _shown(headers["host"])
            return APIError(
                400, f"The Host header '{shown}' is not a name this server answers to without an API key; "
                f"start it with --allowed-hosts {_shown(host_name(headers['host']))} (or set --api-key).", code="invalid_host",
            )
        if scope["method"] == "POST":
            given = headers.get("content-type", "")
            if given.split(";")[0].strip().lower() != "application/json":
                what = f"The request's Content-Type is '{_shown(given)}'" if given.strip() else "The request has no Content-Type"
                return APIError(415, f"{what}; send the body as JSON with 'Content-Type: application/json'.", code="unsupported_media_type")
        return None

    def _too_large(self) -> APIError:
        return APIError(
            413, f"The request body is larger than this server's limit of {self.max_bytes} bytes (--max-request-bytes); "
            f"send a smaller request.", param="body", code="request_too_large",
        )

    async def _read_body(self, headers: dict, receive) -> bytes | APIError | None:
        """The whole body, never more than the limit of it (an error past it; None if the client left)."""
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            return self._too_large()
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """A ``receive`` that gives the body read once, then waits for the client's disconnect as usual."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _shown(text: str) -> str:
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= 80 else text[:77] + "..."


async def send_error(send, error: APIError) -> None:
    """Answer with ``error`` in OpenAI's shape, from ASGI middleware (no app to raise into)."""
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
