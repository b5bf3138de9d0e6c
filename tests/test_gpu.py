"""The CUDA path: bf16, gradient checkpointing, QLoRA. Skipped where no GPU is present."""

import json

import pytest
import torch
from click.testing import CliRunner

from tuneforge.cli import cli
from tuneforge.modeling import load_for_inference, read_run_record

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"Spell {w}."}, {"role": "assistant", "content": " ".join(w)}]}
        for w in ["apple", "banana", "cherry", "damson", "elder", "fig", "grape", "hazel"] * 2
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft(*args):
    result = CliRunner().invoke(cli, ["sft", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("train_type", ["lora", "qlora"])
def test_cuda_training_uses_bf16_and_checkpointing(train_type, tiny_llama_dir, chats, tmp_path):
    if train_type == "qlora":
        pytest.importorskip("bitsandbytes")
    out = tmp_path / train_type
    result = sft("--model", tiny_llama_dir, "--dataset", chats, "--output-dir", out, "--max-steps", 4,
                 "--per-device-batch-size", 4, "--train-type", train_type, "--packing", "--learning-rate", 1e-2,
                 "--logging-steps", 1)
    assert "fused: 14 LoRA layers" in result.output  # 4-bit bases too
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0]
    run = read_run_record(out)
    assert run.torch_dtype == "bfloat16"
    assert run.config["gradient_checkpointing"] is True
    assert run.tuner == train_type
    loaded = load_for_inference(str(out))
    assert loaded.device.type == "cuda"
    ids = torch.tensor([loaded.template.prompt([{"role": "user", "content": "Spell fig."}])], device="cuda")
    out_ids = loaded.model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out_ids.shape[1] > ids.shape[1]


def test_qlora_base_is_4bit(tiny_llama_dir, chats, tmp_path):
    pytest.importorskip("bitsandbytes")
    from tuneforge.config import SFTConfig
    from tuneforge.options import build
    from tuneforge.training.setup import load_trainable_model, prepare

    setup = prepare(build(SFTConfig, {"model": tiny_llama_dir, "dataset": [str(chats)], "train_type": "qlora",
                                      "output_dir": str(tmp_path / "q")}), "sft")
    model = load_trainable_model(setup)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds
