"""tuneforge export --format gguf: the file transformers reads back answers like the merged model.

For a tiny random Llama, Qwen2, Qwen3 and InternLM3 (each with a real BPE tokenizer and a
LoRA adapter that moves its logits), the exported GGUF loads in plain transformers
(``gguf_file=``); its logits on a probe match those of the merged model (f16: to float16
rounding; q8_0 and q4_k_m: exactly those of the merged weights passed through the
quantization, and within a stated share of the unquantized ones), its tokenizer encodes a probe text to the same ids,
and its chat template is the one the run trained with. Bad input fails in one sentence
before any weights are read. (test_export_gguf_llamacpp.py runs such files in llama.cpp;
the real SmolLM2 test here does so too.)

The tokenizers are SmolLM2's byte-level BPE cut to its first 2,000 tokens (and the merges
among them): transformers parses a GGUF vocabulary in Python, about 20 s per read for
SmolLM2's 49,152 tokens on these machines, and a read-back reads it three times.
"""

import json
import shutil
from pathlib import Path

import pytest

from tuneforge.templates import get_template
from tuneforge.testing import make_lora_adapter, run_cli, tiny_model_dir

PROBE = "Hello world! 12345 <|im_start|>user\nThe  café's naïve résumé\n\tcosts $3.50?<|im_end|>\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_tokenizer_dir(path: Path, source: str, size: int = 2000) -> str:
    """SmolLM2's tokenizer with only its first ``size`` tokens and the merges among them: a smaller real BPE."""
    from transformers import AutoTokenizer

    data = json.loads((Path(source) / "tokenizer.json").read_text())
    vocab = {token: index for token, index in data["model"]["vocab"].items() if index < size}
    merges = [m for m in data["model"]["merges"] if (a := m[0] if isinstance(m, list) else m.split(" ")[0]) in vocab
              and (b := m[1] if isinstance(m, list) else m.split(" ")[1]) in vocab and a + b in vocab]
    data["model"].update(vocab=vocab, merges=merges)
    data["added_tokens"] = [token for token in data["added_tokens"] if token["id"] < size]
    path.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (Path(source) / name).exists():
            shutil.copy(Path(source) / name, path / name)
    (path / "tokenizer.json").write_text(json.dumps(data))
    assert len(AutoTokenizer.from_pretrained(path)) == size
    return str(path)


def _lora_run(base: str, out: Path) -> Path:
    run = make_lora_adapter(base, out, seed=1, run_record=True)
    record = json.loads((run / "tuneforge_run.json").read_text())
    record.update(model_family="causal-lm", template="chatml", data={"fingerprint": "f00d"})
    (run / "tuneforge_run.json").write_text(json.dumps(record))
    return run


def _base(kind: str, root: Path, smollm2_dir: str) -> str:
    smollm2_dir = small_tokenizer_dir(root / "small-tokenizer", smollm2_dir) if not (root / "small-tokenizer").exists() else str(root / "small-tokenizer")
    if kind == "llama":
        return tiny_model_dir(root / kind, tokenizer_dir=smollm2_dir)
    if kind in ("qwen2", "qwen3"):
        from tuneforge_qwen.testing import qwen_tokenizer_dir

        tokenizer = qwen_tokenizer_dir(root / "qwen-tokenizer", smollm2_dir)
        # transformers' GGUF reader takes a Qwen3's head_dim to be 128 (every released Qwen3's): build it so.
        extra = {"head_dim": 128} if kind == "qwen3" else {}
        return tiny_model_dir(root / kind, model_type=kind, tokenizer_dir=tokenizer, **extra)
    from tuneforge_internlm.testing import internlm_tokenizer_dir, tiny_internlm3_dir

    return tiny_internlm3_dir(root / kind, tokenizer_dir=internlm_tokenizer_dir(root / "internlm-tokenizer", smollm2_dir))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("gguf-runs")
    built = {}

    def get(kind):
        if kind not in built:
            base = _base(kind, root / "bases", smollm2_dir)
            built[kind] = base, _lora_run(base, root / f"{kind}-run")
        return built[kind]

    return get


def _export(run: Path, out: Path, *flags) -> Path:
    run_cli("export", "--model", run, "--format", "gguf", "--allow-template-drift", "--output-dir", out, *flags)
    return out


def _merged(base: str, run: Path, quantize=None):
    """The merged model (transformers + peft), optionally with every weight a GGUF file quantizes passed through Q8_0."""
    import gguf
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), run).merge_and_unload()
    if quantize:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim == 2 and parameter.shape[-1] % 32 == 0:
                    packed = gguf.quants.quantize(parameter.numpy(), gguf.GGMLQuantizationType.Q8_0)
                    parameter.copy_(torch.from_numpy(gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q8_0)))
    return model.eval()


def _read_back(out: Path, name: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(out, gguf_file=name)


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "internlm3"])
def test_f16_gguf_reads_back_as_the_merged_model(runs, tmp_path, kind):
    import gguf
    import torch
    from transformers import AutoTokenizer

    base, run = runs(kind)
    out = _export(run, tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["exported-f16.gguf", "tuneforge_export.json"]
    record = json.loads((out / "tuneforge_export.json").read_text())
    architecture = {"qwen2": "qwen2", "qwen3": "qwen3"}.get(kind, "llama")
    assert (record["quantization"], record["architecture"], record["chat_template"]) == ("f16", architecture, "chatml")

    original = AutoTokenizer.from_pretrained(base)
    model, tokenizer = _read_back(out, "exported-f16.gguf")
    ids = original(PROBE)["input_ids"]
    assert tokenizer(PROBE)["input_ids"] == ids
    assert tokenizer.chat_template == get_template("chatml", original).jinja()
    merged = _merged(base, run)
    expected = _logits(merged, ids)
    torch.testing.assert_close(_logits(model, ids), expected, atol=2e-3, rtol=2e-3)
    unmerged = _logits(_base_model(base), ids)
    assert (expected - unmerged).abs().max() > 1e-2, "the adapter must move the logits for the comparison to mean anything"

    reader = gguf.GGUFReader(out / "exported-f16.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert reader.fields["general.architecture"].contents() == architecture


def _base_model(base: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_q8_0_gguf_is_the_merged_model_quantized(runs, tmp_path, kind):
    import gguf
    import torch
    from transformers import AutoTokenizer

    base, run = runs(kind)
    out = _export(run, tmp_path / "q8", "--quantization", "q8_0")
    name = "q8-q8_0.gguf"
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out / name).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    assert types["output_norm.weight"] == "F32"
    model, _ = _read_back(out, name)
    ids = AutoTokenizer.from_pretrained(base)(PROBE)["input_ids"]
    got = _logits(model, ids)
    # Exactly the merged weights through Q8_0 (the layout is right) ...
    torch.testing.assert_close(got, _logits(_merged(base, run, quantize=True), ids), atol=1e-4, rtol=1e-4)
    # ... and Q8_0's error (a 1/254 step of each block's largest weight) moves the logits by a few percent of their range at most.
    exact = _logits(_merged(base, run), ids)
    assert (got - exact).abs().max() < 0.03 * exact.abs().max()
    assert (got - exact).abs().max() > 0  # it really is quantized


def test_ollama_modelfile_has_the_template_and_its_stop_tokens(runs, tmp_path):
    _, run = runs("llama")
    out = _export(run, tmp_path / "ollama", "--ollama")
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./ollama-f16.gguf\n")
    assert (
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"""'
        in modelfile
    )
    assert 'PARAMETER stop "<|im_end|>"' in modelfile.splitlines()
    assert json.loads((out / "tuneforge_export.json").read_text())["ollama_modelfile"] is True


def test_bad_input_fails_in_one_sentence_before_the_weights_load(runs, tmp_path):
    _, run = runs("llama")
    broken = tmp_path / "broken-run"
    shutil.copytree(run, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not weights")  # loading it would fail differently

    result = run_cli("export", "--model", broken, "--format", "gguf", "--quantization", "q5", "--output-dir", tmp_path / "q5", ok=False)
    assert "'q5' is not one of 'f16', 'q8_0', 'q4_k_m'" in result.output

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.gguf").write_text("mine")
    result = run_cli("export", "--model", broken, "--format", "gguf", "--output-dir", taken, ok=False)
    assert "already exists and is not empty" in result.output and [p.name for p in taken.iterdir()] == ["keep.gguf"]

    moe = Path(tiny_model_dir(tmp_path / "moe", model_type="qwen3_moe", head_dim=16, num_experts=4, num_experts_per_tok=2,
                              moe_intermediate_size=32, num_layers=1))
    (moe / "model.safetensors").write_bytes(b"not weights")
    (moe / "tuneforge_run.json").write_text(json.dumps({
        "method": "sft", "base_model": str(moe), "model_family": "causal-lm", "template": "default",
        "tuner": "full", "saves_adapter": False, "torch_dtype": "float32",
    }))
    result = run_cli("export", "--model", moe, "--format", "gguf", "--output-dir", tmp_path / "moe-out", ok=False)
    assert "is a 'qwen3_moe' model, which the gguf exporter has no llama.cpp layout for" in result.output
    assert not (tmp_path / "moe-out").exists()


@pytest.mark.slow(minutes=3)
def test_fine_tuned_smollm2_becomes_a_gguf_that_answers_as_it_does(tmp_path, smollm2_dir):
    """One LoRA step on the real SmolLM2-135M-Instruct (which came from a GGUF file), then back to GGUF."""
    import torch
    from transformers import AutoTokenizer

    data = tmp_path / "rows.jsonl"
    row = {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]}
    data.write_text(json.dumps(row) + "\n")
    run = tmp_path / "run"
    run_cli("sft", "--model", smollm2_dir, "--dataset", data, "--output-dir", run, "--max-steps", 1, "--per-device-batch-size", 1,
            "--max-length", 64, "--lora-rank", 2, "--learning-rate", "1e-2", "--save-steps", 100)
    out = tmp_path / "smollm2-gguf"
    run_cli("export", "--model", run, "--format", "gguf", "--output-dir", out)
    model, tokenizer = _read_back(out, "smollm2-gguf-f16.gguf")
    original = AutoTokenizer.from_pretrained(run)
    ids = original(PROBE)["input_ids"]
    assert tokenizer(PROBE)["input_ids"] == ids
    assert tokenizer.chat_template == original.chat_template
    prompt = original.apply_chat_template(row["messages"][:1], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    merged = _merged(smollm2_dir, run)
    expected, got = _logits(merged, prompt), _logits(model, prompt)
    # float16 weights through 30 layers: about 0.1% of the logits' range (0.036 of 27 measured)
    assert (got - expected).abs().max() < 0.01 * expected.abs().max()
    assert got[0, -1].argmax() == expected[0, -1].argmax()

    # llama.cpp itself (test_export_gguf_llamacpp.py; skipped without .venv-llamacpp): the whole vocabulary's
    # tokenization, the template it reads, the logits and the greedy answer.
    from test_export_gguf_llamacpp import MESSAGES, greedy, run_llamacpp

    prompt_text = original.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    (result,) = run_llamacpp([{"path": str(out / "smollm2-gguf-f16.gguf"), "ids": prompt, "text": PROBE, "messages": MESSAGES,
                               "generate": 6, "logits": str(tmp_path / "logits.npy")}], tmp_path)
    assert result["tokens"] == ids and result["n_vocab"] == 49152
    assert result["metadata"]["tokenizer.chat_template"] == original.chat_template
    assert result["prompt"] == prompt_text and result["prompt_ids"] == original(prompt_text)["input_ids"]
    cpp = torch.from_numpy(result["logits"])[None]
    assert (cpp - expected).abs().max() < 0.01 * expected.abs().max()
    assert cpp[0, -1].argmax() == expected[0, -1].argmax()
    assert result["generated"] == greedy(merged, result["prompt_ids"], 6)


def test_a_llama3_split_and_llama3_rope_are_written_as_llama_cpp_reads_them(tmp_path, smollm2_dir):
    """A Llama 3.1-style model: its text split is named `llama-bpe`, its RoPE scaling is the `rope_freqs` tensor."""
    import gguf
    import torch
    from transformers import AutoConfig, AutoTokenizer
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tuneforge.gguf_export import LLAMA3_SPLIT

    small_tokenizer_dir(tmp_path / "tokenizer-gpt2", smollm2_dir)
    tokenizer_dir = Path(small_tokenizer_dir(tmp_path / "tokenizer", smollm2_dir))
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]}
    (tokenizer_dir / "tokenizer.json").write_text(json.dumps(data))
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}
    run = Path(tiny_model_dir(tmp_path / "run", tokenizer_dir=str(tokenizer_dir), rope_parameters=rope, num_layers=1))
    (run / "tuneforge_run.json").write_text(json.dumps({
        "method": "sft", "base_model": str(run), "model_family": "causal-lm", "template": "chatml",
        "tuner": "full", "saves_adapter": False, "torch_dtype": "float32",
    }))
    out = _export(run, tmp_path / "out")

    reader = gguf.GGUFReader(out / "out-f16.gguf")
    assert reader.fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
    original = AutoTokenizer.from_pretrained(run)
    text = PROBE + "end.\n\nNew x:\n    y"  # the GPT-2 split would cut these newlines differently
    split_by_gpt2 = AutoTokenizer.from_pretrained(tmp_path / "tokenizer-gpt2")(text)["input_ids"]
    assert original(text)["input_ids"] != split_by_gpt2, "the text must tell the two splits apart"
    assert AutoTokenizer.from_pretrained(out, gguf_file="out-f16.gguf")(text)["input_ids"] == original(text)["input_ids"]

    config = AutoConfig.from_pretrained(run)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    head_dim = config.hidden_size // config.num_attention_heads
    plain = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    (freqs,) = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
    # llama.cpp divides each frequency by its factor: the factors are what turns the plain frequencies into Llama 3.1's.
    torch.testing.assert_close(torch.from_numpy(freqs.data.copy()), plain / scaled, rtol=1e-4, atol=1e-4)
    assert freqs.data.max() == pytest.approx(8.0) and freqs.data.min() == pytest.approx(1.0)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_k_quants_are_read_back_by_the_gguf_package_within_half_a_step(qtype):
    """The layout the gguf package's (llama.cpp's) dequantizer reads; each value within half a step of its block."""
    import gguf
    import numpy as np

    from tuneforge import gguf_kquants

    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.05, (8, 512)).astype(np.float32)
    x[1, 7] = 0.9  # an outlier widens its block's steps
    x[2] = 0.0
    x[3, :256] = rng.uniform(0.5, 0.6, 256)  # all positive: the minimum is the offset
    t = getattr(gguf.GGMLQuantizationType, qtype)
    packed = gguf_kquants.quantize(x, t)
    assert packed.dtype == np.uint8 and packed.shape == gguf.quants.quant_shape_to_byte_shape(x.shape, t)
    back = gguf.quants.dequantize(packed, t)
    blocks, errors = x.reshape(-1, 256), np.abs(back - x).reshape(-1, 256).max(axis=-1)
    if qtype == "Q4_K":  # 16 levels from the block's minimum (or 0) to its maximum
        step = (blocks.max(axis=-1) - np.minimum(blocks.min(axis=-1), 0)) / 15
    else:  # 63 levels symmetric around 0
        step = np.abs(blocks).max(axis=-1) / 31
    assert (errors <= 0.5 * step + 1e-6).all()
    assert (back[2] == 0).all()
    assert np.sqrt(((back - x) ** 2).mean()) / x.std() < {"Q4_K": 0.08, "Q6_K": 0.02}[qtype]


def test_q4_k_m_gguf_is_the_merged_model_quantized_as_llama_cpp_mixes_it(tmp_path, smollm2_dir):
    """Rows of 256 and more: Q4_K and Q6_K where llama.cpp's Q4_K_M puts them, read back by transformers."""
    import gguf
    import torch
    from transformers import AutoTokenizer

    from tuneforge import gguf_kquants

    root = tmp_path / "bases"
    base = tiny_model_dir(root / "wide", tokenizer_dir=small_tokenizer_dir(root / "small-tokenizer", smollm2_dir),
                          hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2)
    run = _lora_run(base, tmp_path / "run")
    out = _export(run, tmp_path / "q4", "--quantization", "q4_k_m")
    reader = gguf.GGUFReader(out / "q4-q4_k_m.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    # tied embedding and the first and last eighth of ffn_down/attn_v (of 2 layers: layer 1) in Q6_K, the rest in Q4_K
    assert types["token_embd.weight"] == "Q6_K" and "output.weight" not in types
    assert (types["blk.0.ffn_down.weight"], types["blk.1.ffn_down.weight"]) == ("Q4_K", "Q6_K")
    assert (types["blk.0.attn_v.weight"], types["blk.1.attn_v.weight"]) == ("Q4_K", "Q6_K")
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_up.weight"] == "Q4_K" and types["output_norm.weight"] == "F32"
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M

    model, _ = _read_back(out, "q4-q4_k_m.gguf")
    ids = AutoTokenizer.from_pretrained(base)(PROBE)["input_ids"]
    got = _logits(model, ids)
    merged = _merged(base, run)
    quantized = _merged(base, run)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    with torch.no_grad():
        for hf_name, parameter in quantized.named_parameters():
            if parameter.ndim == 2:
                name = names.get_name(hf_name, try_suffixes=(".weight",))
                t = gguf_kquants.q4_k_m_type(name, parameter.shape[-1], 2, tied=True)
                back = gguf.quants.dequantize(gguf_kquants.quantize(parameter.numpy(), t), t)
                parameter.copy_(torch.from_numpy(back))
    torch.testing.assert_close(got, _logits(quantized, ids), atol=1e-4, rtol=1e-4)
    exact = _logits(merged, ids)
    # 4-bit weights (about 6% RMS error each, see above) in series through 2 layers: 17% of the logits' RMS measured.
    relative = ((got - exact).norm() / exact.norm()).item()
    assert 0 < relative < 0.25
