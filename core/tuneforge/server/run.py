"""``tuneforge deploy``: load the model, then serve it with uvicorn until SIGTERM.

On SIGTERM (or Ctrl-C) the server stops taking requests (503) and lets those in
flight finish, for at most ``--shutdown-timeout`` seconds; it then cuts those still
open (a 503, or an error event ending a stream) and exits with 0.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import uvicorn

from ..errors import TuneforgeError
from ..inference import create_engine
from ..inference.run import engine_options_from
from ..inference.adapters import check_adapter, parse_adapter_flag

API_KEY_ENV = "TUNEFORGE_API_KEY"


def run_deploy(config) -> None:
    adapters = _adapters_from(config.adapters)
    _check_config(config)
    api_key = _api_key(config)
    options = engine_options_from(config)
    print(f"Loading {config.model} with the {config.engine} engine...", file=sys.stderr, flush=True)
    engine = create_engine(config.engine, config.model, **options)
    try:
        from .app import create_app

        from .images import ImageLimits
        from .schemas import RequestLimits

        images = ImageLimits(config.allowed_image_dir, config.max_image_bytes, config.max_image_pixels, config.max_images)
        app = create_app(
            engine,
            model_name=config.served_model_name or default_served_name(config.model),
            adapters=adapters,
            api_key=api_key,
            default_max_tokens=config.max_tokens,
            limits=RequestLimits(
                default_max_tokens=config.max_tokens, max_tokens=config.max_tokens_limit, max_n=config.max_n, max_choices=config.max_choices
            ),
            max_request_bytes=config.max_request_bytes or _default_body_bytes(engine, images),
            host=config.host,
            allowed_hosts=config.allowed_hosts,
            allow_admin_without_key=config.allow_admin_without_key,
            reasoning_field=config.reasoning_field,
            images=images,
        )
    except BaseException:
        engine.close()
        raise
    serve(app, host=config.host, port=config.port, shutdown_timeout=config.shutdown_timeout)


def _adapters_from(flags: list[str]) -> dict[str, str]:
    adapters: dict[str, str] = {}
    for flag in flags:
        name, path = parse_adapter_flag(flag)
        if name in adapters:
            raise TuneforgeError(f"--adapters names '{name}' twice; give each adapter its own name.")
        check_adapter(name, path)  # its files, before the model loads
        adapters[name] = path
    return adapters


def _check_config(config) -> None:
    if not 0 <= config.port <= 65535:
        raise TuneforgeError(f"--port is {config.port}; give a port from 0 to 65535.")
    if config.batch_size < 1:
        raise TuneforgeError(f"--batch-size is {config.batch_size}; it must be at least 1.")
    if config.max_tokens < 1:
        raise TuneforgeError(f"--max-tokens is {config.max_tokens}; it must be at least 1.")
    if config.shutdown_timeout < 0:
        raise TuneforgeError(f"--shutdown-timeout is {config.shutdown_timeout}; it must be 0 or more seconds.")
    if config.api_key is not None and not config.api_key.strip():
        raise TuneforgeError("--api-key is empty; give a key, or leave the option out to serve without one.")
    if config.api_key is not None and config.api_key_file is not None:
        raise TuneforgeError("Both --api-key and --api-key-file are given; give the key one way.")
    for name in ("max_request_bytes", "max_n", "max_choices", "max_tokens_limit", "max_image_bytes", "max_image_pixels", "max_images"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise TuneforgeError(f"--{name.replace('_', '-')} is {getattr(config, name)}; it must be at least 1.")
    if config.allowed_image_dir is not None and not os.path.isdir(config.allowed_image_dir):
        raise TuneforgeError(f"--allowed-image-dir {config.allowed_image_dir} is not a directory; give the directory whose image files requests may name.")
    if config.max_tokens > config.max_tokens_limit:
        raise TuneforgeError(f"--max-tokens is {config.max_tokens}, above --max-tokens-limit {config.max_tokens_limit}; lower it or raise the limit.")
    for host in config.allowed_hosts:
        if not host.strip() or any(c.isspace() or c in "/@" for c in host):
            raise TuneforgeError(f"--allowed-hosts has {host!r}; give a host name such as models.example.com (or * for any).")


def _default_body_bytes(engine, images) -> int:
    """4 MiB, or for a model whose template takes images, room for the most images a request may carry."""
    from ..messages import template_modalities
    from .guard import DEFAULT_MAX_REQUEST_BYTES

    if "image" in template_modalities(getattr(engine, "template", None)):
        return max(DEFAULT_MAX_REQUEST_BYTES, images.body_bytes())
    return DEFAULT_MAX_REQUEST_BYTES


def _api_key(config) -> str | None:
    """The API key: --api-key, else the first line of --api-key-file, else $TUNEFORGE_API_KEY (None: no key)."""
    if config.api_key is not None:
        return config.api_key.strip()
    if config.api_key_file is not None:
        try:
            with open(config.api_key_file, encoding="utf-8") as file:
                key = file.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise TuneforgeError(f"--api-key-file {config.api_key_file} cannot be read ({exc.__class__.__name__}: {exc}); give a readable file holding the key.") from None
        if not key:
            raise TuneforgeError(f"--api-key-file {config.api_key_file} holds no key on its first line; write the key there.")
        return key
    key = os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise TuneforgeError(f"{API_KEY_ENV} is set but empty; set it to the key, or unset it to serve without one.")
    return key.strip() if key is not None else None


def default_served_name(model: str) -> str:
    """The base model's name in the API: a local directory's own name (never its path), else the spec as given."""
    if os.path.exists(model):
        return os.path.basename(os.path.abspath(model)) or model
    return model


def serve(app, *, host: str, port: int, shutdown_timeout: float = 30.0) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, draining the requests in flight first (see ``DrainingServer``)."""
    logger = logging.getLogger("tuneforge.server")
    if not logger.handlers:  # uvicorn configures only its own loggers
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    # uvicorn's own graceful wait comes after the drain: by then every request has
    # ended or been cut, so it only waits for the last bytes to go out.
    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=CUT_GRACE, log_level="info")
    server = DrainingServer(config)
    server.drain_timeout = shutdown_timeout
    server.run()


# Seconds the answers cut at the shutdown deadline get to be written before the connections close.
CUT_GRACE = 2.0


class DrainingServer(uvicorn.Server):
    """A uvicorn server that, on the first signal, refuses new requests and waits for those in flight.

    After ``drain_timeout`` seconds (or at a second signal) it cuts those still open
    (``ServerState.cut``: a 503 for a request waiting for the engine, an error event
    and ``[DONE]`` for a stream, the engine's work stopped) and exits: uvicorn gives
    the answers ``CUT_GRACE`` seconds to be written (a request that is still there
    then, one whose body is still arriving say, is cancelled, and the gate answers it
    with a 503), and closing the engine stops the batch that runs. A third signal
    exits at once.
    """

    drain_timeout = 30.0
    _draining_since: float | None = None
    _signals = 0
    _hurry: threading.Event | None = None

    def handle_exit(self, sig, frame) -> None:
        # Unlike uvicorn's own handler, the signal is not raised again after the shutdown:
        # a drained server exits with status 0.
        self._signals += 1
        if self._signals > 1:
            if self._signals == 2 and self._hurry is not None:
                self._hurry.set()  # cut now
            else:
                self.force_exit = self.should_exit = True
            return
        self._draining_since = time.monotonic()
        state = getattr(getattr(self.config.app, "state", None), "tuneforge", None)
        if state is None:
            self.should_exit = True
            return
        state.draining = True
        self._hurry = threading.Event()
        threading.Thread(target=self._wait_for_in_flight, args=(state,), name="tuneforge-drain", daemon=True).start()

    def _wait_for_in_flight(self, state) -> None:
        deadline = self._draining_since + self.drain_timeout
        while state.in_flight > 0 and time.monotonic() < deadline and not self._hurry.is_set():
            self._hurry.wait(0.05)
        loop = getattr(state, "loop", None)
        if state.in_flight > 0 and loop is not None and not self.force_exit:
            why = "A second signal came" if self._hurry.is_set() else f"The shutdown timeout ({self.drain_timeout:g} s) passed"
            logging.getLogger("tuneforge.server").warning(
                "%s with %d request(s) in flight; they are cut (503, or an error event for a stream).", why, state.in_flight
            )
            try:
                loop.call_soon_threadsafe(state.cut)  # runs before uvicorn's shutdown, which waits CUT_GRACE for the answers
            except RuntimeError:  # the loop has already stopped
                pass
        self.should_exit = True
