"""The exported 4-bit checkpoints repacked into AutoAWQ's layout, as the lmdeploy engine serves them.

LMDeploy cannot run here (CUDA only), so these tests check the numbers: the AutoAWQ copy,
read back by the layout's own rules (written out below, independently of the packer),
gives every layer the weight that compressed-tensors itself decompresses from the export,
for symmetric (GPTQ) and asymmetric (AWQ) groups. `plugins/lmdeploy/gpu_check.sh exported`
serves the copy with LMDeploy on a GPU, beside the pt engine on the export itself.
"""

import json
import sys
from pathlib import Path

import pytest

from tuneforge.testing import run_cli

pytest.importorskip("llmcompressor", reason="llmcompressor is not installed here; the README's test command runs these tests in .venv-awq")

_LMDEPLOY_PLUGIN = str(Path(__file__).parents[2] / "lmdeploy")
sys.path.insert(0, _LMDEPLOY_PLUGIN)
try:
    from tuneforge_lmdeploy import awq_layout  # noqa: E402
finally:
    sys.path.remove(_LMDEPLOY_PLUGIN)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "awq_plugin")
ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ: output column 8w + ORDER[k] sits in bits 4k..4k+3 of word w


def unpack(words):
    """AutoAWQ's 4-bit integers, unpacked bit by bit: ``[rows, 8 * words]``."""
    import torch

    rows, n = words.shape
    values = torch.zeros(rows, n * 8, dtype=torch.int64)
    for w in range(n):
        for k in range(8):
            values[:, 8 * w + ORDER[k]] = (words[:, w].to(torch.int64) >> (4 * k)) & 0xF
    return values


def read_awq(qweight, qzeros, scales, group):
    """The float weight ``[out, in]`` an AutoAWQ GEMM layer holds."""
    import torch

    q, zeros = unpack(qweight), unpack(qzeros)  # [in, out], [groups, out]
    rows = torch.arange(q.shape[0]) // group
    return ((q - zeros[rows]).to(torch.float32) * scales.to(torch.float32)[rows]).T


@pytest.fixture(scope="module", params=[("gptq", "--symmetric"), ("awq", "--no-symmetric")], ids=["gptq-symmetric", "awq-asymmetric"])
def exported(request, tiny_run, tmp_path_factory):
    method, symmetry = request.param
    out = tmp_path_factory.mktemp(f"{method}-layout") / method
    run_cli("export", "--model", tiny_run, "--format", method, "--output-dir", out, "--group-size", 32, symmetry,
            "--num-calibration-samples", 4, "--quality-rows", 2, "--quality-prompts", 1, "--quality-max-new-tokens", 4)
    return out


def test_the_awq_copy_holds_the_weights_compressed_tensors_decompresses(exported, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    symmetric = json.loads((exported / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"]
    copy = awq_layout.convert(exported, tmp_path / "awq")
    config = json.loads((copy / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm", "zero_point": True}
    dense = AutoModelForCausalLM.from_pretrained(exported, quantization_config=CompressedTensorsConfig(run_compressed=False), dtype=torch.float32)
    tensors = load_file(str(copy / "model.safetensors"))
    layers = sorted(name[: -len(".qweight")] for name in tensors if name.endswith(".qweight"))
    assert len(layers) == 7 * dense.config.num_hidden_layers  # every projection of every decoder layer
    zero_points = set()
    for base in layers:
        expected = dense.get_submodule(base).weight.detach()
        got = read_awq(tensors[base + ".qweight"], tensors[base + ".qzeros"], tensors[base + ".scales"], 32)
        # the same integers and zero points; only the scale's rounding to float16 differs
        torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-6)
        zero_points |= set(unpack(tensors[base + ".qzeros"]).flatten().tolist())
    # symmetric groups all have zero point 8; asymmetric ones vary
    assert (zero_points == {8}) == bool(symmetric)
    torch.testing.assert_close(tensors["model.embed_tokens.weight"].float(), dense.model.embed_tokens.weight.detach(), rtol=1e-3, atol=1e-4)
    assert (copy / "tokenizer_config.json").is_file() and json.loads((copy / awq_layout.MARKER).read_text())["group_size"] == 32


def test_the_copy_is_built_once_under_tuneforge_home_and_again_when_the_export_changes(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    first = awq_layout.cached_copy(exported)
    assert first.parent == tmp_path / "home" / "lmdeploy-awq" and (first / "model.safetensors").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert awq_layout.cached_copy(exported) == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    # the export itself is never written to
    assert not any(p.name.startswith(("tuneforge_awq_layout", "qweight")) for p in exported.iterdir())


def test_a_checkpoint_that_is_not_w4a16_is_refused_in_one_sentence(tiny_run, tmp_path):
    assert awq_layout.w4a16_groups({"quant_method": "awq", "bits": 4}) is None
    with pytest.raises(Exception, match="not a compressed-tensors pack-quantized 4-bit weight-only checkpoint"):
        awq_layout.convert(tiny_run.parent / "base", tmp_path / "out")
