"""Capabilities, not names: the core reads what a record declares and never tests a built-in's name.

The scan below reads the core's own modules (outside ``builtin/``, where the built-in
records live) and fails on a string literal naming a built-in device, parallel
backend, tuner, training method, exporter or inference engine, or on a torch device
type in a comparison, unless the allow-list says why it is not a special case.
The other tests register a device record in-process (the CPU under another name)
and check that the core gives it the defaults it declares.
"""

import ast
import dataclasses
import importlib
import json
import os
import pkgutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import tuneforge
import tuneforge.builtin
from tuneforge.records import Device, DeviceKernels, FastPath, ParallelBackend, TrainingMethod, Tuner, iter_records

KINDS = ("devices", "parallel_backends", "tuners", "training_methods", "exporters", "inference_engines")
DEVICE_TYPES = {"cuda", "cpu", "npu", "mps"}
CORE = Path(tuneforge.__file__).parent

# Folders of the core the scan skips, and why: every other module is scanned, bench/ and testing/ included.
SKIPPED = {
    "builtin/": "the built-in plugins: their records are where names and device types belong",
}

# (module, literal): why it is not a special case.
ALLOWED = {
    ("config.py", "lora"): "the default of --train-type",
    ("config.py", "full"): "the default of --checkpointing-policy (a policy, not the tuner)",
    ("config.py", "single"): "the default of --parallel-backend",
    ("config.py", "pt"): "the default of --engine",
    ("config.py", "merge-lora"): "the default of --exporter, which --merge-lora stands for",
    ("quickstart.py", "lora"): "the quickstart recipe's --train-type (an option value, like a user's YAML)",
    ("training/sft.py", "sft"): "run_sft is the built-in sft method's runner and names its own runs",
    ("training/checkpointing.py", "full"): "the checkpointing policy 'full' (not the tuner)",
    ("training/attention.py", "cuda"): "the varlen kernel is a CUDA kernel: it reads torch's CUDA autocast dtype",
    ("training/setup.py", "cpu"): "TrainingArguments.use_cpu is transformers' switch for torch's CPU device type",
    ("inference/pt.py", "cpu"): "torch.random.fork_rng forks the CPU generator always and takes accelerator devices only",
    ("inference/adapters.py", "pt"): "safetensors' framework='pt' (PyTorch), not the engine",
    ("export.py", "merge-lora"): "merge_lora is the built-in merge-lora exporter's own code and records its name",
    ("export.py", "cpu"): "merging runs on the CPU device, which every machine has, to keep the accelerator free",
    ("export.py", "full"): "the description of a run record that names no tuner (runs from before it was recorded)",
    ("gguf_export.py", "gguf"): "export_gguf is the built-in gguf exporter's own code and records its name",
    ("testing/__init__.py", "sft"): "make_lora_adapter writes a fixture run record, as the built-in sft method leaves it",
    ("testing/__init__.py", "lora"): "make_lora_adapter writes a fixture run record of a LoRA adapter, as the lora tuner leaves it",
    ("testing/device_conformance.py", "sft"): "the kit trains through the built-in sft method, the path a device plugin must carry",
    ("testing/device_conformance.py", "pt"): "the kit answers through the built-in pt engine, which a device plugin must serve",
    ("testing/device_conformance.py", "cpu"): "tensors come back to host memory to be compared with the host's own; every machine has it",
    ("doctor.py", "cuda"): "the report names torch's build from torch.version.cuda (the CUDA toolkit torch was built with), not a device",
    ("plan.py", "full"): "the checkpointing policy 'full' (not the tuner)",
    ("plan.py", "cpu"): "the memory of the visible accelerator is asked of torch's module for its device type; the CPU has none to plan for",
    ("bench/train.py", "sft"): "the benchmark trains through the built-in sft method's own path and names its run so",
    ("bench/recipes.py", "sft"): "the recipes are compared through the `tuneforge sft` command, as a user runs them",
    ("bench/recipes.py", "full"): "a recipe compared is full fine-tuning, the --train-type value a user would pass to `tuneforge sft`",
    ("bench/train.py", "single"): "the default of --parallel-backend, as sft's (the one-process run the comparison runners stand beside)",
    ("bench/train.py", "lora"): "the hand-written comparison runner records its own settings as plain LoRA",
    ("bench/train.py", "full"): "the checkpointing policy 'full' (not the tuner)",
    ("bench/train.py", "cuda"): "its timers synchronise CUDA and read torch.cuda's peak counters; a Device offers no synchronize or peak reset",
    ("bench/train.py", "cpu"): "the processor label of the report when the platform names none",
    ("bench/ms_swift.py", "lora"): "ms-swift's own --tuner_type value, and the settings its LoRA run records",
    ("bench/ms_swift.py", "full"): "the checkpointing policy 'full' (not the tuner)",
    ("bench/ms_swift.py", "cuda"): "ms-swift's padding-free path needs flash_attn on CUDA, and its peak counters are torch.cuda's",
    ("bench/ms_swift.py", "cpu"): "ms-swift's child process is kept off the GPU when the other runners run on the CPU",
    ("bench/decode.py", "pt"): "the decode benchmark compares the built-in pt engine with plain generate() by design",
    ("bench/decode.py", "cuda"): "its timers synchronise CUDA, and it picks CUDA when there is one, like the GPU figures it reproduces",
    ("bench/decode.py", "cpu"): "the device it falls back to, and the processor label of the report",
}


def built_in_names() -> dict[str, str]:
    """Every built-in record's name of the kinds the core could special-case, with its kind."""
    names = {}
    for info in pkgutil.iter_modules(tuneforge.builtin.__path__):
        module = importlib.import_module(f"tuneforge.builtin.{info.name}")
        for kind in KINDS:
            hook = getattr(module, f"tuneforge_{kind}", None)
            if hook is not None:
                names.update({record.name: kind for record in iter_records(hook())})
    return names


def _device_types_compared(node: ast.AST):
    """Device-type literals a comparison or a ``startswith``/``endswith`` call tests against."""
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("startswith", "endswith"):
        operands = list(node.args)
    else:
        return
    for operand in operands:
        for inner in ast.walk(operand):
            if isinstance(inner, ast.Constant) and inner.value in DEVICE_TYPES:
                yield inner


def name_checks(source: str, names) -> list[tuple[int, str]]:
    """(line, literal) of each built-in name or compared device type in ``source``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            found.add((node.lineno, node.value))
        for constant in _device_types_compared(node):
            found.add((constant.lineno, constant.value))
    return sorted(found)


def test_the_built_in_names_are_collected():
    names = built_in_names()
    assert {"cpu", "cuda", "single", "fsdp", "lora", "sft", "merge-lora", "pt"} <= set(names)
    assert names["fsdp"] == "parallel_backends" and names["cuda"] == "devices"


def test_the_scan_finds_a_name_check():
    names = built_in_names()
    source = (
        'cuda = device.torch_device == "cuda"\n'
        'if getattr(backend, "name", "single") in ("single", "ddp"):\n'
        "    pass\n"
        'on_gpu = str(device).startswith("npu")\n'
        'help_text = "runs on cuda, cpu or npu"\n'
    )
    assert name_checks(source, names) == [(1, "cuda"), (2, "ddp"), (2, "single"), (4, "npu")]


def test_the_core_checks_no_built_in_name_or_device_type():
    names = built_in_names()
    found = []
    for path in sorted(CORE.rglob("*.py")):
        module = path.relative_to(CORE).as_posix()
        if any(module.startswith(folder) for folder in SKIPPED):
            continue
        for line, literal in name_checks(path.read_text(encoding="utf-8"), names):
            if (module, literal) not in ALLOWED:
                found.append(f"{module}:{line}: {literal!r}")
    assert not found, (
        "The core names a built-in record or a device type; read a record field instead "
        "(or add a justified entry to ALLOWED):\n" + "\n".join(found)
    )


def test_a_benchmark_tests_the_tuner_by_its_fields_not_its_name():
    """--compare needs a tuner the hand-written runners reproduce: an unquantized, fusable adapter."""
    from tuneforge.bench.train import compares_with
    from tuneforge.registry import get_registry

    registry = get_registry()
    assert [name for name in ("lora", "dora", "qlora", "full", "freeze") if compares_with(registry.get("tuners", name))] == ["lora"]
    renamed = dataclasses.replace(registry.get("tuners", "lora"), name="acme-lora")
    assert compares_with(renamed)


def test_every_allowed_entry_is_still_needed():
    names = built_in_names()
    seen = set()
    for module, literal in ALLOWED:
        hits = name_checks((CORE / module).read_text(encoding="utf-8"), names)
        if any(found == literal for _, found in hits):
            seen.add((module, literal))
    assert seen == set(ALLOWED), f"allowed but no longer there: {sorted(set(ALLOWED) - seen)}"


# -- a device registered in-process: the CPU under another name ---------------------

ACME_FAST_PATH = FastPath(packing=True, chunked_loss=True, gradient_checkpointing=False)
EMPTIED = []
READIED = []  # the acme device's prepare_training calls: the value its environment had set by then


PREPARED = []


def _prepare_pairs(config):
    """A method that does not pack: it only prepares its run and keeps the resolved options."""
    from tuneforge.training.setup import prepare

    setup = prepare(config, "acme-pairs")
    PREPARED.append(setup.config)
    return str(setup.output_dir)


FUSED = []


def _acme_fuse(model) -> int:
    """Counts the adapter layers it was handed (a stand-in for a plugin's own fused kernel)."""
    count = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
    FUSED.append(count)
    return count


class AcmePlugin:
    """Two devices whose hardware is the CPU, each with fast-path defaults of its own, a
    training method that does not pack samples, a backend that places a quantized base and
    an adapter tuner with a fusion of its own."""

    @tuneforge.hookimpl
    def tuneforge_tuners(self):
        from tuneforge.builtin import tuners

        lora = next(tuner for tuner in iter_records(tuners.tuneforge_tuners()) if tuner.name == "lora")
        yield dataclasses.replace(lora, name="acme-adapter", description="LoRA with acme's fusion", fuse=_acme_fuse)

    @tuneforge.hookimpl
    def tuneforge_parallel_backends(self):
        yield ParallelBackend(
            name="acme-pool",
            description="One process that places a quantized base in a pool of its own",
            launch_command=lambda nproc: None,
            supports_quantized_base=True,
            load_kwargs=lambda config, device: {"device_map": {"": f"{device.name}-pool"}, "max_memory": {0: "1GiB"}},
        )

    @tuneforge.hookimpl
    def tuneforge_training_methods(self):
        from tuneforge.config import TrainConfig

        yield TrainingMethod(
            name="acme-pairs", description="Batches answers side by side", options=TrainConfig, run=_prepare_pairs
        )

    @tuneforge.hookimpl
    def tuneforge_devices(self):
        yield Device(
            name="acme",
            description="The CPU under another name",
            torch_device="cpu",
            is_available=lambda: True,
            distributed_backend="gloo",
            peak_memory=lambda: 3 * 2**30,
            empty_cache=lambda: EMPTIED.append("acme"),
            environment={"TUNEFORGE_TEST_ACME_ALLOC": "roomy"},
            fast_path=ACME_FAST_PATH,
            prepare_training=lambda: READIED.append(os.environ.get("TUNEFORGE_TEST_ACME_ALLOC")),
        )
        yield Device(
            name="acme-fused",
            description="The CPU under another name, with the fused kernels on",
            torch_device="cpu",
            is_available=lambda: True,
            fast_path=FastPath(fused_kernels=True, gradient_checkpointing=True),
        )
        yield Device(
            name="acme-kernels",
            description="The CPU under another name, with fused operators of its own",
            torch_device="cpu",
            is_available=lambda: True,
            fast_path=FastPath(packing=True, varlen_attention=True, fused_kernels=True),
            kernels=lambda: DeviceKernels(rms_norm=_acme_rms_norm, varlen_attention=_acme_varlen),
        )
        yield Device(
            name="acme-absent",
            description="Hardware this machine lacks",
            torch_device="cpu",
            is_available=lambda: False,
            unavailable=lambda: "--device acme-absent needs acme-runtime, which is not installed: pip install acme-runtime.",
        )


KERNEL_CALLS = []


def _acme_rms_norm(hidden, weight, eps):
    from tuneforge.training.fused_norm import rms_norm

    KERNEL_CALLS.append("rms_norm")
    return rms_norm(hidden, weight, eps)


def _acme_varlen(query, key, value, cu_seqlens, max_len, scale, causal):
    KERNEL_CALLS.append(("varlen", cu_seqlens.tolist(), causal))
    return query


@pytest.fixture
def acme():
    from tuneforge.testing import plugin_installed

    with plugin_installed(AcmePlugin(), "acme", "tuneforge-acme") as manager:
        yield manager


def _defaults(device_name, backend_name="single", method="sft", **given):
    from tuneforge.config import SFTConfig
    from tuneforge.options import build
    from tuneforge.registry import get_registry
    from tuneforge.training.setup import resolve_fast_path

    registry = get_registry()
    device = registry.get("devices", device_name)
    return resolve_fast_path(
        build(SFTConfig, given), device, None, registry.get("parallel_backends", backend_name),
        registry.get("training_methods", method),
    )


FAST_FIELDS = ("packing", "chunked_loss", "attn_implementation", "fused_lora", "fused_norm", "fused_swiglu", "fused_rope", "gradient_checkpointing")


def _fast(config) -> dict:
    return {name: getattr(config, name) for name in FAST_FIELDS}


def test_a_device_gets_the_fast_path_it_declares(acme):
    assert _fast(_defaults("acme")) == {
        "packing": True, "chunked_loss": True, "attn_implementation": None,
        "fused_lora": False, "fused_norm": False, "fused_swiglu": False, "fused_rope": False,
        "gradient_checkpointing": False,
    }
    fused = _fast(_defaults("acme-fused"))
    assert fused["fused_lora"] is fused["fused_norm"] is fused["fused_swiglu"] is fused["fused_rope"] is True
    assert (fused["packing"], fused["chunked_loss"], fused["gradient_checkpointing"]) == (False, False, True)
    # The same CPU hardware under its own name keeps the built-in CPU defaults: all off.
    assert set(_fast(_defaults("cpu")).values()) <= {False, None}


def test_a_backend_turns_off_what_it_cannot_run_and_refuses_it_when_asked(acme):
    from tuneforge.config import SFTConfig
    from tuneforge.errors import TuneforgeError
    from tuneforge.options import build
    from tuneforge.registry import get_registry
    from tuneforge.training.setup import check_fast_path, fast_path_off, resolve_fast_path

    assert _defaults("acme", "ddp").chunked_loss is True
    assert _defaults("acme", "fsdp").chunked_loss is True  # FSDP2 runs it: the output weight is read gathered
    # fsdp checkpoints with accelerate's whole-layer wrapper: the selective policy goes back to full, and says why
    assert _defaults("acme", "fsdp", checkpointing_policy="selective").checkpointing_policy == "full"
    fsdp = get_registry().get("parallel_backends", "fsdp")
    assert list(fast_path_off(build(SFTConfig, {}), fsdp)) == ["checkpointing_policy"]
    with pytest.raises(TuneforgeError) as refused:
        check_fast_path(build(SFTConfig, {"checkpointing_policy": "selective"}), fsdp)
    assert str(refused.value).startswith("--checkpointing-policy selective cannot run under --parallel-backend fsdp: FSDP's activation checkpointing")
    assert str(refused.value).endswith("; leave --checkpointing-policy out.")
    # A backend that shards parameters and declares nothing: the chunked loss, which reads the output weight, is off.
    sharding = ParallelBackend(name="sharding", description="shards", launch_command=lambda n: None, shards_parameters=True)
    device = get_registry().get("devices", "acme")
    assert resolve_fast_path(build(SFTConfig, {}), device, None, sharding).chunked_loss is False
    with pytest.raises(TuneforgeError, match=r"^--chunked-loss cannot run under --parallel-backend sharding: each process holds only a piece"):
        check_fast_path(build(SFTConfig, {"chunked_loss": True}), sharding)
    check_fast_path(build(SFTConfig, {"chunked_loss": False}), sharding)  # turned off by hand: nothing to refuse


def test_the_user_s_options_beat_the_device_defaults(acme):
    chosen = _fast(_defaults("acme", packing=False, gradient_checkpointing=True, fused_norm=True))
    assert (chosen["packing"], chosen["gradient_checkpointing"], chosen["fused_norm"]) == (False, True, True)
    assert chosen["chunked_loss"] is True and chosen["fused_lora"] is False


def test_the_built_in_cuda_device_declares_every_part_of_the_fast_path():
    from tuneforge.registry import get_registry

    cuda = get_registry().get("devices", "cuda")
    assert cuda.fast_path == FastPath(
        packing=True, varlen_attention=True, chunked_loss=True, fused_kernels=True, gradient_checkpointing=True
    )
    assert cuda.distributed_backend == "nccl" and cuda.environment == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert get_registry().get("devices", "cpu").fast_path == FastPath()


def test_training_on_a_registered_device_uses_its_record(acme, tiny_llama_dir, tmp_path, monkeypatch):
    from tuneforge.cli import cli

    monkeypatch.delenv("TUNEFORGE_TEST_ACME_ALLOC", raising=False)
    READIED.clear()
    data = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i} it is."}]}
        for i in range(8)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "sft", "--model", tiny_llama_dir, "--dataset", str(data), "--output-dir", str(out), "--device", "acme",
        "--max-steps", "2", "--per-device-batch-size", "2", "--save-steps", "100", "--max-length", "64", "--lora-rank", "4",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "tuneforge_run.json").read_text())["config"]
    assert (config["device"], config["packing"], config["chunked_loss"], config["gradient_checkpointing"]) == ("acme", True, True, False)
    assert config["fused_lora"] is False
    assert os.environ["TUNEFORGE_TEST_ACME_ALLOC"] == "roomy"  # set before the weights loaded
    assert READIED == ["roomy"]  # the runtime's settings: once a run, after its environment
    assert "peak 3.00 GiB allocated on acme" in result.output


def test_training_on_cuda_turns_off_cudnn_attention():
    # cuDNN's attention backward returns NaN for masked lengths 64 past a multiple of 128 (bf16, H100/H200,
    # torch 2.11 and later); the setting is torch's, so the CUDA record's step runs without a GPU too.
    import torch

    from tuneforge.registry import get_registry

    cuda = get_registry().get("devices", "cuda")
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        cuda.prepare_training()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)


@pytest.mark.parametrize("flag, readied", [(None, True), ("--no-device-settings", False)])
def test_a_training_benchmark_applies_the_device_s_settings_unless_told_not_to(acme, tmp_path, flag, readied):
    # --no-device-settings measures what a device's prepare_training costs (cuDNN attention off, on cuda)
    from tuneforge.cli import cli

    READIED.clear()
    output = tmp_path / "bench.json"
    args = ["bench", "train", "--shape", "tiny", "--device", "acme", "--samples-per-step", "2", "--steps", "1",
            "--warmup-steps", "0", "--no-packing", "--output", str(output)]
    result = CliRunner().invoke(cli, args + ([flag] if flag else []), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert bool(READIED) is readied
    (run,) = json.loads(output.read_text())["runs"]
    assert run["settings"]["device_settings"] is readied
    assert ("device settings off" in result.output) is not readied


def test_an_engine_empties_its_device_s_cache_when_it_closes(acme, tiny_llama_dir):
    from tuneforge.inference.pt import create_pt_engine

    EMPTIED.clear()
    engine = create_pt_engine(tiny_llama_dir, device="acme", batch_size=1)
    assert engine.loaded.device_record.name == "acme"
    engine.close()
    assert EMPTIED == ["acme"]


def test_a_device_s_own_kernels_replace_the_core_s_and_its_sentence_names_what_is_missing(acme, tiny_llama_dir):
    import torch

    from tuneforge.errors import TuneforgeError
    from tuneforge.modeling import pick_device
    from tuneforge.registry import get_registry
    from tuneforge.training import attention, fused_norm
    from tuneforge.training.setup import device_kernels, register_attention

    KERNEL_CALLS.clear()
    device = get_registry().get("devices", "acme-kernels")
    config = _defaults("acme-kernels")
    # Packed rows take the varlen attention where no CUDA kernel exists, since the device brings its own.
    assert config.attn_implementation == attention.VARLEN and config.fused_norm is True
    assert _defaults("acme").attn_implementation is None
    register_attention(config, device)
    try:
        query = torch.randn(1, 2, 5, 4)
        out, _ = attention.varlen_attention_forward(
            torch.nn.Module(), query, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), None, scaling=0.5,
            position_ids=torch.tensor([[0, 1, 2, 0, 1]]))
        assert KERNEL_CALLS == [("varlen", [0, 3, 5], True)] and out.shape == (1, 5, 2, 4)
    finally:
        register_attention(config, None)  # the core's kernel again, for whatever runs next in this process
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert fused_norm.enable(model, function=device_kernels(device).rms_norm) == 5
    model(torch.tensor([[1, 2, 3]]))
    assert KERNEL_CALLS.count("rms_norm") == 5
    assert device_kernels(get_registry().get("devices", "acme")) == DeviceKernels()  # a device that brings none
    with pytest.raises(TuneforgeError, match=r"^--device acme-absent needs acme-runtime, which is not installed: pip install acme-runtime\.$"):
        pick_device("acme-absent")


# -- a training method says whether it packs ------------------------------------------


def test_only_a_method_that_packs_gets_the_device_s_packing_default(acme):
    from tuneforge.registry import get_registry

    assert get_registry().get("training_methods", "sft").supports_packing is True
    assert get_registry().get("training_methods", "acme-pairs").supports_packing is False
    assert _defaults("acme").packing is True
    unpacked = _fast(_defaults("acme", method="acme-pairs"))
    assert unpacked["packing"] is False and unpacked["attn_implementation"] is None
    assert unpacked["chunked_loss"] is True  # the rest of the device's fast path still applies


def test_packing_is_refused_for_a_method_that_does_not_pack(acme, tiny_llama_dir, tmp_path):
    from tuneforge.cli import cli

    out = tmp_path / "run"
    PREPARED.clear()
    result = CliRunner().invoke(cli, [
        "rlhf", "--method", "acme-pairs", "--model", tiny_llama_dir, "--output-dir", str(out), "--device", "acme", "--packing",
    ])
    assert result.exit_code == 1, result.output
    assert "--packing is not supported by --method acme-pairs, which does not pack samples; leave it out." in result.output
    assert PREPARED == [] and not out.exists()

    result = CliRunner().invoke(cli, [
        "rlhf", "--method", "acme-pairs", "--model", tiny_llama_dir, "--output-dir", str(out), "--device", "acme",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (config,) = PREPARED
    assert (config.packing, config.chunked_loss) == (False, True)


# -- a parallel backend says whether it holds a quantized base, and how it places it --


def _chats(tmp_path):
    data = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]}] * 4
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def test_a_backend_without_quantized_base_support_refuses_qlora_before_loading(tiny_llama_dir, tmp_path):
    from tuneforge.cli import cli
    from tuneforge.registry import get_registry

    backends = {b.name: b.supports_quantized_base for b in get_registry().all("parallel_backends")}
    assert backends == {"single": True, "ddp": True, "fsdp": False}
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "sft", "--model", tiny_llama_dir, "--dataset", str(_chats(tmp_path)), "--output-dir", str(out),
        "--train-type", "qlora", "--parallel-backend", "fsdp", "--nproc-per-node", "2",
    ])
    assert result.exit_code == 1, result.output
    # Refused for the backend, not for the machine: the same message on a CPU and on a GPU.
    assert (
        "--train-type qlora trains on a quantized base, which --parallel-backend fsdp cannot hold; "
        "use --parallel-backend single or ddp, or another --train-type such as lora."
    ) in " ".join(result.output.split())
    assert "launching" not in result.output and not out.exists()


def _setup(tuner_name, backend_name, device_name="cpu"):
    from pathlib import Path

    from tuneforge.config import SFTConfig
    from tuneforge.options import build
    from tuneforge.registry import get_registry
    from tuneforge.training.setup import Setup

    registry = get_registry()
    return Setup(
        config=build(SFTConfig, {"train_type": tuner_name, "parallel_backend": backend_name}), method="sft",
        bundle=None,
        device=registry.get("devices", device_name), dtype=None, tuner=registry.get("tuners", tuner_name),
        backend=registry.get("parallel_backends", backend_name), output_dir=Path("."), resume_from=None,
    )


def test_a_quantized_base_is_placed_by_the_backend(acme, monkeypatch):
    from transformers import BitsAndBytesConfig

    from tuneforge.training.setup import model_load_kwargs

    monkeypatch.setenv("LOCAL_RANK", "3")
    kwargs = model_load_kwargs(_setup("qlora", "ddp"))
    assert kwargs["device_map"] == {"": 3}  # this process's GPU under torchrun
    assert isinstance(kwargs["quantization_config"], BitsAndBytesConfig) and kwargs["quantization_config"].load_in_4bit
    monkeypatch.delenv("LOCAL_RANK")
    assert model_load_kwargs(_setup("qlora", "single"))["device_map"] == {"": 0}

    pooled = model_load_kwargs(_setup("qlora", "acme-pool", "acme"))
    assert pooled["device_map"] == {"": "acme-pool"} and pooled["max_memory"] == {0: "1GiB"}
    assert "quantization_config" in pooled  # the tuner's own arguments are kept
    # A base that is not quantized loads as before: the backend places nothing.
    assert model_load_kwargs(_setup("lora", "acme-pool", "acme")) == {}
    assert model_load_kwargs(_setup("full", "ddp")) == {}


# -- the tuner owns its fusion -----------------------------------------------------------


def test_the_lora_tuners_own_their_fusion(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from tuneforge.config import SFTConfig
    from tuneforge.options import build
    from tuneforge.registry import get_registry

    tuners = {t.name: t for t in get_registry().all("tuners")}
    assert tuners["lora"].fuse is not None and tuners["qlora"].fuse is tuners["lora"].fuse
    # DoRA layers have no fused product; full and freeze train no adapter layers.
    assert tuners["dora"].fuse is tuners["full"].fuse is tuners["freeze"].fuse is None

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    wrapped = tuners["lora"].prepare(model, build(SFTConfig, {"lora_rank": 4, "target_modules": ["q_proj"]}))
    assert tuners["lora"].fuse(wrapped) == model.config.num_hidden_layers
    assert all(hasattr(m, "_peft_forward") for n, m in wrapped.named_modules() if n.endswith("q_proj"))


def _sft_output(tiny_llama_dir, tmp_path, *flags):
    from tuneforge.cli import cli

    result = CliRunner().invoke(cli, [
        "sft", "--model", tiny_llama_dir, "--dataset", str(_chats(tmp_path)), "--output-dir", str(tmp_path / "run"),
        "--overwrite-output-dir", "--max-steps", "1", "--per-device-batch-size", "2", "--save-steps", "100",
        "--max-length", "64", "--lora-rank", "4", *flags,
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_fused_lora_runs_the_tuner_s_own_fusion(acme, tiny_llama_dir, tmp_path):
    FUSED.clear()
    output = _sft_output(tiny_llama_dir, tmp_path, "--train-type", "acme-adapter", "--fused-lora", "--target-modules", "q_proj")
    assert FUSED == [2] and "fused: 2 LoRA layers" in output
    _sft_output(tiny_llama_dir, tmp_path, "--train-type", "acme-adapter", "--no-fused-lora", "--target-modules", "q_proj")
    assert FUSED == [2]  # the option still decides
    # A tuner with nothing to fuse (DoRA shares LoRA's options): the option does nothing and claims nothing.
    assert "LoRA layers" not in _sft_output(tiny_llama_dir, tmp_path, "--train-type", "dora", "--fused-lora")
