"""The FastAPI app: OpenAI's chat and completions endpoints around one engine.

    from tuneforge.inference import create_engine
    from tuneforge.server import create_app

    app = create_app(create_engine("pt", "smollm2-135m-instruct"), model_name="smollm2")
    # uvicorn.run(app, host="127.0.0.1", port=8000)

Every refusal is an OpenAI error body (``{"error": {"message", "type", "param",
"code"}}``) with a 4xx status; an unexpected failure is a 500 in the same shape,
and the server keeps serving.

A request's engine work (a ``worker.Call`` or ``worker.Stream``) stops when its
client leaves, and the state keeps it while it runs, so that the shutdown can cut
it when its timeout passes (``ServerState.cut``, called by ``run.DrainingServer``):
a 503 for a request still waiting, an error event and ``[DONE]`` for a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import TuneforgeError
from ..inference import Reasoning
from ..inference.structured import StreamedCalls, check_features
from .errors import STATUS_TYPES, APIError, bad_request, error_body
from .guard import DEFAULT_MAX_REQUEST_BYTES, HostCheck, RequestGuard
from .images import ImageLimits, check_images, has_images
from .schemas import ParsedRequest, RequestLimits, _describe, load_json, parse_chat, parse_completion
from .worker import Call, Stream, check_adapter_name, in_thread

log = logging.getLogger("tuneforge.server")


class ServerState:
    """What the endpoints and the gate share."""

    def __init__(self, engine, model_name: str, api_key: str | None, default_max_tokens: int) -> None:
        self.engine = engine
        self.model_name = model_name
        self.api_key = api_key
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())
        self.draining = False
        self.in_flight = 0  # requests the gate let in and that have not ended (/health is not counted)
        self.loop = None  # the event loop serving the app (set at start-up)
        self.cut_done = False
        self._open: set = set()  # the engine calls and streams of the requests in flight

    def track(self, work):
        """Keep ``work`` (a ``Call`` or ``Stream``) where the shutdown can cut it; refused once it has cut."""
        if self.cut_done:
            work.stop()
            raise shut_down()
        self._open.add(work)
        return work

    def untrack(self, work) -> None:
        """The request of ``work`` ended (answered, failed or left): stop what may still run of it."""
        self._open.discard(work)
        work.stop()

    def cut(self) -> None:
        """The shutdown timeout passed: stop every engine call and stream still open (on the event loop).

        Requests waiting for the engine get a 503; a stream that has begun ends with an
        error event and ``[DONE]``.
        """
        self.cut_done = True
        for work in list(self._open):
            work.stop(shut_down())

    def adapter_for(self, model: str | None) -> str | None:
        """The adapter a request's ``model`` names (None: the base model)."""
        if model is None or model == self.model_name:
            return None
        if model in self.adapters():
            return model
        known = ", ".join([self.model_name, *self.adapters()])
        raise APIError(404, f"The model {_describe(model)} does not exist; use one of: {known} (see GET /v1/models).", type="not_found_error", param="model", code="model_not_found")

    def adapters(self) -> list[str]:
        return list(getattr(self.engine, "adapters", None) or ())


def shut_down() -> APIError:
    """What a request still open when the shutdown timeout passes is told."""
    return APIError(503, "The server shut down before the answer was complete; retry on another instance or after it restarts.", type="service_unavailable", code="shutting_down")


class Gate:
    """Refuses requests while draining (503) and without the API key (401); counts those in flight (not ``/health``).

    A request the server cancels before it began its answer (one still there after
    the shutdown's grace) gets the shutdown's 503 rather than a bare 500.
    """

    def __init__(self, app, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            await _send_error(send, APIError(503, "The server is shutting down and takes no new requests; retry on another instance or after it restarts.", type="service_unavailable", code="shutting_down"))
            return
        if self.state.api_key and scope["path"].startswith("/v1"):
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.state.api_key.encode()):
                what = "No API key was given" if not given else "The API key is not the server's"
                await _send_error(send, APIError(401, f"{what}; send the key given to --api-key as 'Authorization: Bearer KEY'.", type="authentication_error", code="invalid_api_key"))
                return
        counted = scope["path"] != "/health"  # a load balancer's polls do not hold up the drain
        started = False

        async def tracked_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        self.state.in_flight += counted
        try:
            await self.app(scope, receive, tracked_send)
        except asyncio.CancelledError:
            if started:
                raise
            try:
                await _send_error(send, shut_down())
            except Exception:
                raise asyncio.CancelledError from None
            # Answered in full: the request ends here, without uvicorn's traceback for a cancelled task.
            log.info("A request still open at the end of the shutdown was answered with 503.")
        finally:
            self.state.in_flight -= counted


async def _send_error(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(
    engine,
    *,
    model_name: str,
    adapters: dict[str, str] | None = None,
    api_key: str | None = None,
    default_max_tokens: int = 512,
    close_engine: bool = True,
    limits: RequestLimits | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    host: str | None = None,
    allowed_hosts: Sequence[str] = (),
    allow_admin_without_key: bool = False,
    reasoning_field: bool = True,
    images: ImageLimits | None = None,
) -> FastAPI:
    """An app serving ``engine`` as ``model_name``, with ``adapters`` ({name: path}) loaded now.

    ``limits`` bound what one request may ask for (its ``default_max_tokens`` wins
    over the argument of that name); ``host`` is the address the server listens on
    and, with ``allowed_hosts``, says which Host headers it answers to without an
    API key (see ``guard``); without a key, the admin endpoint is off unless
    ``allow_admin_without_key``. ``reasoning_field``: a thinking model's reasoning
    comes in ``reasoning_content`` unless a request's ``include_reasoning`` says
    otherwise (False: it stays in ``content``, unless a request asks for it).
    ``images``: the forms and sizes of ``image_url`` parts the server takes (see
    ``images``; default: ``data:`` URLs only, within the default limits).
    """
    for name, path in (adapters or {}).items():
        _load_adapter(engine, name, path, model_name)
    state = ServerState(engine, model_name, api_key, default_max_tokens)
    limits = limits or RequestLimits(default_max_tokens=default_max_tokens)
    state.limits = dataclasses.replace(limits, context_length=limits.context_length or getattr(engine, "context_length", None))
    state.allow_admin = bool(api_key) or allow_admin_without_key
    state.reasoning_field = reasoning_field
    state.images = images or ImageLimits()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.loop = asyncio.get_running_loop()  # the shutdown cuts requests on it
        yield
        if close_engine:
            engine.close()

    app = FastAPI(title="tuneforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tuneforge = state

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"There is no endpoint {request.method} {request.url.path}; see docs/serving.md for the endpoints.",
                   405: f"{request.url.path} does not take {request.method}; see docs/serving.md for the endpoints."}.get(exc.status_code, str(exc.detail))
        return JSONResponse(error_body(message, type=STATUS_TYPES.get(exc.status_code, "invalid_request_error")), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("Request %s %s failed", request.method, request.url.path)
        return JSONResponse(error_body(f"The server failed to answer ({type(exc).__name__}: {exc}); the request was not completed.", type="server_error"), status_code=500)

    @app.get("/health")
    async def health():
        body = {"status": "ok", "model": state.model_name, "requests_in_flight": state.in_flight}
        stats = getattr(engine, "stats", None)
        if callable(stats):
            body["engine"] = stats()
        return body

    @app.get("/v1/models")
    async def models():
        entries = [_model_entry(state.model_name, state.created)]
        entries += [_model_entry(name, state.created, parent=state.model_name) for name in state.adapters()]
        return {"object": "list", "data": entries}

    @app.post("/v1/admin/adapters")
    async def add_adapter(request: Request):
        if not state.allow_admin:
            raise APIError(403, "The admin endpoint is off on a server without an API key; start the server with --api-key "
                           "(or with --allow-admin-without-key where only you can reach it).", type="permission_error", code="admin_disabled")
        body = await _json(request)
        if not isinstance(body, dict) or set(body) - {"name", "path"}:
            raise bad_request("The body must be {\"name\": NAME, \"path\": PATH} and nothing else.", param="body")
        name, path = body.get("name"), body.get("path")
        if not isinstance(name, str) or not isinstance(path, str) or not path:
            raise bad_request(f"'name' and 'path' must be non-empty strings, not {_describe(name)} and {_describe(path)}.", param="name" if not isinstance(name, str) else "path")
        if len(name) > MAX_ADAPTER_NAME:
            raise bad_request(f"The adapter name has {len(name)} characters; give a name of at most {MAX_ADAPTER_NAME}.", param="name")
        check_adapter_name(name, [state.model_name, *state.adapters()])
        if not hasattr(engine, "load_adapter"):
            raise bad_request(f"The inference engine {type(engine).__name__} does not serve LoRA adapters; serve adapters with an engine that does.", param="name")
        try:
            await in_thread(_load_adapter, engine, name, path, state.model_name)
        except Exception as exc:
            # The client learns only that it failed: what a path holds, or whether it exists, stays in the log.
            log.warning("Loading the adapter %r from %s failed: %s", name, _describe(path), exc, exc_info=not isinstance(exc, (APIError, TuneforgeError)))
            raise APIError(400, f"No LoRA adapter for this model could be loaded as '{name}' from the path given; check the path "
                           f"and the adapter (the server's log says what failed).", param="path", code="adapter_not_loaded") from None
        return JSONResponse(_model_entry(name, int(time.time()), parent=state.model_name), status_code=201)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        parsed = parse_chat(await _json(request), state.limits)
        if has_images(parsed.requests):  # their headers are read off the event loop
            parsed.requests = await in_thread(check_images, parsed.requests, state.images)
        return await _answer(state, request, parsed, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        parsed = parse_completion(await _json(request), state.limits)
        return await _answer(state, request, parsed, chat=False)

    app.add_middleware(RequestGuard, state=state, max_request_bytes=max_request_bytes, hosts=HostCheck(host, allowed_hosts))
    app.add_middleware(Gate, state=state)  # outermost: draining and the API key come first
    return app


def _load_adapter(engine, name: str, path: str, model_name: str) -> None:
    """Load an adapter into the engine under ``name`` (refused when the name or the engine cannot take it)."""
    try:
        check_adapter_name(name, [model_name, *(getattr(engine, "adapters", None) or ())])
    except APIError as exc:
        raise TuneforgeError(exc.message) from None
    if not hasattr(engine, "load_adapter"):
        raise TuneforgeError(f"The inference engine {type(engine).__name__} does not serve LoRA adapters; serve adapter '{name}' with an engine that does.")
    engine.load_adapter(name, path)


def _model_entry(name: str, created: int, parent: str | None = None) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "tuneforge", "parent": parent, "root": parent or name}


MAX_ADAPTER_NAME = 128
# Bodies up to this size are parsed on the event loop; larger ones on a thread of their own.
_PARSE_ON_LOOP = 64 * 1024


async def _json(request: Request) -> Any:
    raw = await request.body()  # at most --max-request-bytes (RequestGuard read it)
    if len(raw) <= _PARSE_ON_LOOP:
        return load_json(raw)
    return await in_thread(load_json, raw)


async def _answer(state: ServerState, http: Request, parsed: ParsedRequest, *, chat: bool):
    adapter = state.adapter_for(parsed.model)
    separate = state.reasoning_field if parsed.include_reasoning is None else parsed.include_reasoning
    requests = [dataclasses.replace(request, adapter=adapter, separate_reasoning=separate) for request in parsed.requests]
    model = parsed.model or state.model_name
    ids = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    shape = _Shape(ids, model, chat, parsed.include_usage)
    try:
        check_features(state.engine, requests)
    except TuneforgeError as exc:
        raise bad_request(str(exc), param="logprobs" if requests[0].sampling.logprobs else (requests[0].sampling.structured and requests[0].sampling.structured.source)) from None
    if parsed.stream and requests[0].sampling.n == 1:
        job = state.track(Stream(state.engine, requests[0]))
        try:
            first = await _unless_left(http, job.events.get(), job)
            if first[0] == "error":
                raise first[1]  # an error before the first token is still a plain 4xx (or the shutdown's 503)
        except ClientLeft:
            state.untrack(job)
            log.info("A client left before its stream began; its generation was stopped.")
            return Response(status_code=CLIENT_LEFT)
        except BaseException:
            state.untrack(job)
            raise
        return _sse(_stream_events(shape, job, first), on_close=lambda: state.untrack(job))
    call = state.track(Call(state.engine, requests))
    try:
        results = await _unless_left(http, call.future, call)
    except ClientLeft:
        log.info("A client left before its answer; %s", "its generation was stopped." if call.cancellable else "the engine finishes it (its generate() takes no cancel).")
        return Response(status_code=CLIENT_LEFT)
    finally:
        state.untrack(call)
    completions = [c for per_request in results for c in per_request]
    if parsed.stream:
        return _sse(_stream_whole(shape, completions))
    return shape.whole(completions, results)


# The status logged for a request whose client left before its answer (nginx's "client closed request").
CLIENT_LEFT = 499


class ClientLeft(Exception):
    """The client disconnected while its request waited for the engine."""


async def _unless_left(http: Request, awaitable, work):
    """The result of ``awaitable``, unless the client leaves first: then ``work`` is stopped and ClientLeft raised.

    The request's body has been read, so the next ASGI message is the client's disconnect.
    """
    waiting = asyncio.ensure_future(awaitable)
    left = asyncio.ensure_future(_disconnect(http.receive))
    gone = True
    try:
        await asyncio.wait({waiting, left}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done() and not left.result():  # nothing to listen to: just wait
            await asyncio.wait({waiting})
        gone = not waiting.done()
    finally:
        left.cancel()
        if gone:  # the client left, or this request was cancelled
            waiting.cancel()
            work.stop()
    if gone:
        raise ClientLeft
    return waiting.result()


async def _disconnect(receive) -> bool:
    """Wait for the client's disconnect (True); False if ``receive`` cannot tell."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:
        return False
    return True


class _EventStream(StreamingResponse):
    """Server-sent events; ``on_close`` runs however the response ends (sent whole, client gone, or cancelled)."""

    def __init__(self, content, on_close=None) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()


def _sse(events: AsyncIterator[dict | str], on_close=None) -> StreamingResponse:
    async def encode():
        async for event in events:
            yield "data: " + (event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)) + "\n\n"

    return _EventStream(encode(), on_close)


class _Shape:
    """Builds the OpenAI objects for one response."""

    def __init__(self, id: str, model: str, chat: bool, include_usage: bool) -> None:
        self.id, self.model, self.chat, self.include_usage = id, model, chat, include_usage
        self.created = int(time.time())

    def _choice(self, index: int, completion) -> dict:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": completion.text}
            if completion.reasoning is not None:
                message["reasoning_content"] = completion.reasoning
            if completion.tool_calls or completion.reasoning is not None:
                message["content"] = completion.text or None  # the reasoning alone (cut by max_tokens), or only calls
            if completion.tool_calls:
                message["tool_calls"] = completion.tool_calls
            return {"index": index, "message": message, "logprobs": _logprobs(completion), "finish_reason": completion.finish_reason}
        return {"index": index, "text": completion.text, "logprobs": None, "finish_reason": completion.finish_reason}

    def whole(self, completions: list, results: list[list]) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [self._choice(i, c) for i, c in enumerate(completions)],
            "usage": usage(results),
        }

    def chunk(self, index: int, text: str | None = None, finish_reason: str | None = None, role: bool = False, tool_calls: list | None = None, reasoning: str | None = None, logprobs: dict | None = None, indexed: bool = False) -> dict:
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if reasoning is not None:
                delta["reasoning_content"] = str(reasoning)
            if text is not None:
                delta["content"] = text
            if tool_calls:  # whole calls get their index here; ``indexed`` deltas carry their own
                delta["tool_calls"] = list(tool_calls) if indexed else [{"index": i, **call} for i, call in enumerate(tool_calls)]
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        out = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion", "created": self.created,
               "model": self.model, "system_fingerprint": None, "choices": [choice]}
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, results: list[list]) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion", "created": self.created,
                "model": self.model, "system_fingerprint": None, "choices": [], "usage": usage(results)}


def _logprobs(completion) -> dict | None:
    """A chat choice's ``logprobs``: ``{"content": [...]}`` when the request asked for them."""
    entries = getattr(completion, "logprobs", None)
    return None if entries is None else {"content": entries, "refusal": None}


def usage(results: list[list]) -> dict:
    """OpenAI usage for a response: each prompt counted once, every completion's tokens."""
    prompt = sum(per_request[0].prompt_tokens for per_request in results if per_request)
    completion = sum(c.completion_tokens for per_request in results for c in per_request)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _stream_events(shape: _Shape, job, first: tuple) -> AsyncIterator[dict | str]:
    """The chunks of a streamed answer, a delta at a time: its text (or reasoning), each chunk with the
    logprobs of the tokens it shows where asked; a forced tool call's JSON as ``tool_calls`` deltas."""
    structured = job.request.sampling.structured
    calls = StreamedCalls(structured) if shape.chat and structured is not None and structured.tool_call is not None else None
    sent = 0  # logprob entries sent
    try:
        if shape.chat:
            yield shape.chunk(0, "", role=True)
        event = first
        bound = 16 * job.request.sampling.max_tokens + 64
        for _ in range(bound):
            kind, value = event
            if kind == "delta":
                entries = getattr(value, "logprobs", None)
                logprobs = {"content": entries, "refusal": None} if entries and shape.chat else None
                sent += len(entries or ())
                if calls is not None:
                    yield shape.chunk(0, tool_calls=calls.push(str(value)), logprobs=logprobs, indexed=True)
                elif isinstance(value, Reasoning) and shape.chat:
                    yield shape.chunk(0, reasoning=str(value), logprobs=logprobs)
                else:
                    yield shape.chunk(0, str(value), logprobs=logprobs)
            elif kind == "end":
                rest = (value.logprobs or [])[sent:] if shape.chat else []
                if rest:  # tokens whose text was held back until the end (a stop string's start, say)
                    yield shape.chunk(0, "", logprobs={"content": rest, "refusal": None})
                if shape.chat and value.tool_calls and calls is None:
                    yield shape.chunk(0, tool_calls=value.tool_calls)
                yield shape.chunk(0, None if shape.chat else "", finish_reason=value.finish_reason)
                if shape.include_usage:
                    yield shape.usage_chunk([[value]])
                yield "[DONE]"
                return
            else:
                error = value if isinstance(value, APIError) else APIError(500, f"The server failed while streaming ({type(value).__name__}: {value}).", type="server_error")
                yield error.body()
                yield "[DONE]"
                return
            event = await job.events.get()
        yield APIError(500, "The engine streamed more deltas than max_tokens allows.", type="server_error").body()
        yield "[DONE]"
    finally:
        job.cancelled.set()  # the client left or the stream ended: free the engine


async def _stream_whole(shape: _Shape, completions: list) -> AsyncIterator[dict | str]:
    """n > 1 streamed: each choice arrives whole, in one chunk."""
    for index, completion in enumerate(completions):
        if shape.chat:
            yield shape.chunk(index, "", role=True)
        if shape.chat and completion.reasoning is not None:
            yield shape.chunk(index, reasoning=completion.reasoning)
        yield shape.chunk(index, completion.text, tool_calls=completion.tool_calls, logprobs=_logprobs(completion) if shape.chat else None)
        yield shape.chunk(index, None if shape.chat else "", finish_reason=completion.finish_reason)
    if shape.include_usage:
        yield shape.usage_chunk([completions])
    yield "[DONE]"
