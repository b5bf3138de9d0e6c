"""``tuneforge export``: turn an output dir into a deployable artifact, atomically.

``run_export`` checks the names and the target before any weights are read, lets
the exporter write into an empty temporary folder beside the target, and renames
it into place only when the exporter has finished: an interrupted export leaves
no half-written model behind.

The core's ``merge-lora`` exporter (``merge_lora`` below) folds a LoRA adapter
into its base weights and writes a standalone transformers checkpoint that loads
with plain ``transformers`` (no peft, no tuneforge). Its tokenizer carries the chat
template the model was trained with (the template's ``jinja()``), so transformers,
vLLM and other servers render prompts as training did.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from . import __version__
from .errors import TuneforgeError

EXPORT_RECORD = "tuneforge_export.json"


def run_export(config) -> str:
    """Export ``config.model`` with the chosen exporter into ``config.output_dir``; return the written path."""
    from .config import export_format
    from .options import OptionError, selected_options
    from .registry import get_registry

    try:
        name = export_format(config)
    except OptionError as exc:
        raise TuneforgeError(str(exc)) from None
    exporter = get_registry().get("exporters", name)
    name = exporter.name
    if not Path(config.model).expanduser().exists():
        raise TuneforgeError(f"--model '{config.model}' does not exist; pass the output dir of a tuneforge run.")
    target = Path(config.output_dir).expanduser()
    check_target(target)
    # ``destination`` is where the exporter's output_dir ends up (it writes into a staging folder).
    options = {
        "torch_dtype": config.torch_dtype,
        "destination": str(target.resolve()),
        "trust_remote_code": config.trust_remote_code,
        **selected_options(config).get("exporters", {}).get("options", {}),  # the exporter's own options
    }
    from .modeling import family_option_values, resolve_bundle

    bundle = resolve_bundle(
        str(Path(config.model).expanduser()),
        trust_remote_code=config.trust_remote_code,
        allow_template_drift=config.allow_template_drift,
        family_options=family_option_values(config),
    )
    with staging_dir(target) as staging:
        written = exporter.export(bundle, str(staging), options)
    final = _moved(written, staging, target)
    print(f"Exported {config.model} with {name} to {final}.", file=sys.stderr)
    return final


def check_target(target: Path) -> None:
    """Refuse a target that is a file or a non-empty folder (before anything is read)."""
    if target.exists() and not target.is_dir():
        raise TuneforgeError(f"--output-dir '{target}' is a file; pass a new directory.")
    if target.is_dir() and any(target.iterdir()):
        raise TuneforgeError(
            f"--output-dir '{target}' already exists and is not empty; choose a new directory or empty it first."
        )


class staging_dir:
    """An empty folder beside ``target`` that becomes ``target`` when the block succeeds."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".partial", dir=self.target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp makes it private; the export is not
        return self.path

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            check_target(self.target)  # nothing appeared there while we worked
        except TuneforgeError as exc:
            raise TuneforgeError(f"{exc} The finished export was kept in '{self.path}'.") from None
        if self.target.is_dir():
            self.target.rmdir()
        os.replace(self.path, self.target)


def _moved(written: Any, staging: Path, target: Path) -> str:
    """Where ``written`` (a path inside the staging folder) lies after the rename."""
    path = Path(written or staging)
    try:
        return str(target / path.relative_to(staging))
    except ValueError:
        return str(path)


# -- merge-lora -------------------------------------------------------------------


def merge_lora(bundle, output_dir: str, options: Mapping[str, Any]) -> str:
    """Write base + adapter of the run ``bundle`` (a ``ModelBundle``), merged, as a standalone
    checkpoint into ``output_dir``.

    A full-weights output dir has no adapter to merge: its weights are written as
    they are, in the same standalone layout.
    """
    model_dir, run = bundle.spec, bundle.run
    model, loaded, how, dtype = load_merged(bundle, options)
    _standalone_config(model, loaded)

    out = Path(output_dir)
    model.save_pretrained(out)
    from .templates import save_with_chat_template

    # The processor where the family loads one (a vision-language model's image settings; it saves the tokenizer with it).
    written_template = save_with_chat_template(getattr(bundle, "processor", None) or loaded.tokenizer, loaded.template, out)
    template_note = _template_note(loaded, written_template)
    record = {
        "exported_by": f"tuneforge {__version__}",
        "exporter": "merge-lora",
        "source": str(Path(model_dir).resolve()),
        "base_model": run.base_model,
        "tuner": run.tuner,
        "method": run.method,
        "template": loaded.template_name,
        # The template whose Jinja the exported tokenizer carries (None: it kept its own).
        "chat_template": loaded.template_name if written_template is not None else None,
        "template_matches_tokenizer": template_note is None,
        "template_parity": bundle.template_parity,
        "torch_dtype": dtype,
        "trust_remote_code": bundle.trust_remote_code,
        "run_created": run.created,
        "data_fingerprint": run.data.get("fingerprint"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    destination = Path(options.get("destination") or out)
    (out / "README.md").write_text(_readme(destination, record, how, template_note))
    if template_note:
        print(f"warning: {template_note}", file=sys.stderr)
    return str(out)


def load_merged(bundle, options: Mapping[str, Any]):
    """The run ``bundle``'s model on the CPU with its adapter merged: ``(model, loaded, how, dtype)``.

    ``how`` says in words what was merged; ``dtype`` is the one the weights were loaded in
    (``options["torch_dtype"]``, ``auto``: the one the run trained in).
    """
    from .modeling import load_for_inference
    from .registry import get_registry

    model_dir, run = bundle.spec, bundle.run
    if run is None:
        raise TuneforgeError(
            f"'{model_dir}' is not a tuneforge output dir (it has no tuneforge_run.json); "
            f"pass the --output-dir of a `tuneforge sft` run."
        )
    tuner = None
    if run.saves_adapter:
        tuner = get_registry().get("tuners", run.tuner)
        if tuner.merge is None:
            raise TuneforgeError(
                f"Tuner '{tuner.name}' saved an adapter but cannot merge it into the base weights; "
                f"serve '{model_dir}' as it is (tuneforge infer) or use an exporter of the plugin that provides it."
            )
    dtype = _export_dtype(options.get("torch_dtype") or "auto", run, model_dir)

    loaded = load_for_inference(bundle, device="cpu", torch_dtype=dtype)
    model = loaded.model
    if tuner is not None:
        model = tuner.merge(model)
        how = f"the {tuner.name} adapter merged into its base model"
    else:
        how = f"full weights ({run.tuner or 'full'}); there was no adapter to merge"
    return model, loaded, how, dtype


def _export_dtype(requested: str, run, model_dir: str) -> str:
    """The dtype to write: the one asked for, else the one the run trained in, else the checkpoint's."""
    if requested != "auto":
        return requested
    if run.torch_dtype:
        return str(run.torch_dtype).removeprefix("torch.")
    checkpoint = run.base_model if run.saves_adapter else model_dir
    try:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, TypeError, ValueError):
        return "float32"
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def _standalone_config(model, loaded) -> None:
    """Leave no trace of the training setup in config.json; stop generation where the template does."""
    model.config._name_or_path = ""
    for key in ("adapter_config", "peft_config", "_tuneforge"):
        if hasattr(model.config, key):
            delattr(model.config, key)
    generation = getattr(model, "generation_config", None)
    if generation is None:
        return
    eos = generation.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    for token_id in getattr(loaded.template, "stop_token_ids", None) or []:
        if token_id not in eos:
            eos.append(token_id)
    if eos:
        generation.eos_token_id = eos[0] if len(eos) == 1 else eos
    if generation.pad_token_id is None and loaded.tokenizer.pad_token_id is not None:
        generation.pad_token_id = loaded.tokenizer.pad_token_id


_PROBE = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
]


def _template_note(loaded, written: str | None = None) -> str | None:
    """None when the exported tokenizer's chat template (``written``, else its own) gives the ids the model was trained with."""
    tokenizer, template = loaded.tokenizer, loaded.template
    chat_template = written or getattr(tokenizer, "chat_template", None)
    if not chat_template:
        return (
            f"the tokenizer has no chat template, but the model was trained with the '{loaded.template_name}' "
            f"template; format prompts the way that template does."
        )
    try:
        expected = list(template.prompt(_PROBE))
        ours = list(tokenizer.apply_chat_template(
            _PROBE, chat_template=chat_template, add_generation_prompt=True, tokenize=True, return_dict=False
        ))
    except Exception:  # a template that cannot render the probe: say we could not check
        expected, ours = [0], [1]
    if expected == ours:
        return None
    whose = "written" if written else "tokenizer's own"
    return (
        f"the {whose} chat template differs from the '{loaded.template_name}' template the model was "
        f"trained with; format prompts the way that template does."
    )


def _readme(destination: Path, record: Mapping[str, Any], how: str, template_note: str | None) -> str:
    lines = [
        f"# {destination.name}",
        "",
        f"A standalone transformers checkpoint: {how}.",
        "",
        f"- exported from: `{record['source']}` ({record['exporter']}, {record['exported_by']})",
        f"- base model: `{record['base_model']}`",
        f"- training: {record['method']} with {record['tuner']}, chat template `{record['template']}`",
        f"- weights: {record['torch_dtype']}",
    ]
    if record.get("data_fingerprint"):
        lines.append(f"- data fingerprint: `{record['data_fingerprint']}`")
    if record.get("chat_template"):
        lines.append(
            f"- the tokenizer's chat template is the `{record['chat_template']}` template the model was trained with, "
            f"so `apply_chat_template`, vLLM and other servers that use it render prompts as training did"
        )
    # Exported with --trust-remote-code, the checkpoint may still name its own code (auto_map).
    trust = ", trust_remote_code=True" if record.get("trust_remote_code") else ""
    lines += [
        "",
        "Load it with plain transformers:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{destination}"{trust})',
        f'tokenizer = AutoTokenizer.from_pretrained("{destination}"{trust})',
        'ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt")',
        "```",
        "",
    ]
    if template_note:
        lines += [f"Note: {template_note}", ""]
    lines += [f"`{EXPORT_RECORD}` records the same in machine-readable form.", ""]
    return "\n".join(lines)
