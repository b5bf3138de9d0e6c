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
    api_key: Optional[str] = option(None, "Require 'Authorization: Bearer KEY' on every /v1 request.", group="serving")
    adapters: list[str] = option([], "A LoRA adapter served under its own model name, as NAME=PATH (a tuneforge LoRA output dir or a peft adapter dir on the same base).", group="serving")
    served_model_name: Optional[str] = option(None, "The model name of the base model in the API; default: the --model value.", group="serving")
    batch_size: int = option(8, "Requests generated together.", group="serving")
    max_tokens: int = option(512, "Most tokens an answer gets when the request sets no max_tokens.", group="serving")
    shutdown_timeout: float = option(30.0, "Seconds to let in-flight requests finish after SIGTERM.", group="serving")
