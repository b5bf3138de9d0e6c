"""The options of ``tuneforge deploy``, declared once (flags and YAML derive from them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import EngineOptions, ModelOptions
from ..options import option


@dataclass
class DeployConfig(EngineOptions, ModelOptions):
    model: str = option(help="A tuneforge output dir, a registered model name, a local checkpoint dir or a hub id.", group="model")
    host: str = option("127.0.0.1", "Address to listen on (0.0.0.0 exposes the server to the network).", group="serving")
    port: int = option(8000, "Port to listen on.", group="serving")
    api_key: Optional[str] = option(None, "Require 'Authorization: Bearer KEY' on every /v1 request (the process list shows it: prefer --api-key-file or $TUNEFORGE_API_KEY).", group="serving")
    api_key_file: Optional[str] = option(None, "A file whose first line is the API key (instead of --api-key).", group="serving")
    allowed_hosts: list[str] = option([], "Without an API key, a Host name the server answers to besides its IP addresses, localhost and --host (* for any).", group="serving")
    allow_admin_without_key: bool = option(False, "Without an API key, serve POST /v1/admin/adapters anyway (only where nobody else can reach the server).", group="serving")
    adapters: list[str] = option([], "A LoRA adapter served under its own model name, as NAME=PATH (a tuneforge LoRA output dir or a peft adapter dir on the same base).", group="serving")
    served_model_name: Optional[str] = option(None, "The model name of the base model in the API; default: the --model value (for a local directory, its name, never its path).", group="serving")
    batch_size: int = option(8, "Requests generated together.", group="serving")
    max_tokens: int = option(512, "Most tokens an answer gets when the request sets no max_tokens.", group="serving")
    max_tokens_limit: int = option(8192, "Most tokens a request may ask for with max_tokens.", group="serving")
    max_n: int = option(16, "Most completions (n) one request may ask for.", group="serving")
    max_choices: int = option(64, "Most completions one request may ask for in all: prompts x n.", group="serving")
    max_request_bytes: Optional[int] = option(None, "Largest request body, in bytes; a larger one gets 413. Default: 4 MiB, or for a model that takes images room for --max-images images of --max-image-bytes as base64 plus 1 MiB.", group="serving")
    allowed_image_dir: Optional[str] = option(None, "A directory whose image files requests may name by path (image_url parts with a path under it); without it only data: URLs are taken.", group="serving")
    max_image_bytes: int = option(4 * 1024 * 1024, "Largest image of a request, in bytes; a larger one gets 413.", group="serving")
    max_image_pixels: int = option(4096 * 4096, "Most pixels (width x height) of an image of a request, read from its header; more gets 413.", group="serving")
    max_images: int = option(8, "Most images in one request; more gets 400.", group="serving")
    shutdown_timeout: float = option(30.0, "Seconds to let in-flight requests finish after SIGTERM.", group="serving")
    reasoning_field: bool = option(True, "A thinking model's reasoning comes in 'reasoning_content', apart from 'content' (--no-reasoning-field: left in 'content' as generated, unless a request sets include_reasoning).", group="serving")
