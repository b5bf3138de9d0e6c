"""tuneforge export --format gguf, run by llama.cpp itself: it computes what the merged model computes.

test_export_gguf.py reads the files back with transformers; this loads them in llama.cpp (the
CPU build of llama-cpp-python in ``.venv-llamacpp``, made by ``bash tests/llamacpp_env.sh``,
which the README's test command runs; tests/llamacpp_probe.py is what runs there, one
subprocess for every file). For a LoRA run of a tiny random Llama, Qwen2, Qwen3 and
InternLM3 exported as f16, llama.cpp tokenizes a probe as the run's tokenizer does, its
logits on the probe's tokens match the merged transformers model's, the chat template it
reads from the file renders a conversation as the run's tokenizer does, and from that
prompt it generates the merged model's greedy tokens. A wider Llama (rows of 256, so that
Q4_K applies) exported as q8_0 and q4_k_m: llama.cpp's logits are within the
quantization's error of the merged model's, and mostly pick the same next token.

Without ``.venv-llamacpp`` the tests are skipped, naming the command that makes it; under
CI (``CI=true``) they fail instead.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_export_gguf import PROBE, _base, _export, _logits, _lora_run, _merged, small_tokenizer_dir

from tuneforge.templates import get_template
from tuneforge.testing import tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv-llamacpp" / "bin" / "python"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a café in Paris?"}]
GENERATE = 6
ARCHITECTURE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "internlm3": "llama"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def llamacpp_python() -> Path:
    """.venv-llamacpp's python; the test is skipped without it (it fails under CI)."""
    if not PYTHON.exists():
        message = f"{PYTHON} is missing: make it with `bash tests/llamacpp_env.sh` (tests/setup_and_run.sh does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return PYTHON


def run_llamacpp(jobs: list, root: Path) -> list:
    """Run tests/llamacpp_probe.py on ``jobs`` in .venv-llamacpp: its results, each with its ``logits`` loaded."""
    import numpy as np

    python = llamacpp_python()
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), str(Path(__file__).with_name("llamacpp_probe.py")), root / "jobs.json", root / "result.json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((root / "result.json").read_text())
    for got, job in zip(results, jobs):
        got["logits"] = np.load(job["logits"])
    return results


def greedy(model, ids, n):
    """The ``n`` tokens ``model`` (transformers) picks greedily after ``ids``."""
    import torch

    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-n:]


@pytest.fixture(scope="module")
def probed(tmp_path_factory, smollm2_dir):
    """Export every case, run llama.cpp on every file in one subprocess, and the merged models beside it."""
    from transformers import AutoTokenizer

    llamacpp_python()  # before the work
    root = tmp_path_factory.mktemp("gguf-llamacpp")
    cases = {}
    tokenizer_dir = small_tokenizer_dir(root / "bases" / "small-tokenizer", smollm2_dir)
    # A larger initialisation: the Llama's greedy tokens vary (the default's repeat one token), _base reuses it.
    tiny_model_dir(root / "bases" / "llama", tokenizer_dir=tokenizer_dir, initializer_range=0.2)
    for kind in ARCHITECTURE:
        base = _base(kind, root / "bases", smollm2_dir)
        run = _lora_run(base, root / f"{kind}-run")
        cases[kind] = base, run, _export(run, root / f"{kind}-f16") / f"{kind}-f16-f16.gguf"
    wide = tiny_model_dir(root / "bases" / "wide", tokenizer_dir=tokenizer_dir, hidden_size=256, intermediate_size=512,
                          num_layers=2, num_heads=4, num_kv_heads=2)
    wide_run = _lora_run(wide, root / "wide-run")
    for quantization in ("q8_0", "q4_k_m"):
        out = _export(wide_run, root / quantization, "--quantization", quantization)
        cases[quantization] = wide, wide_run, out / f"{quantization}-{quantization}.gguf"

    jobs, expected = [], {}
    for name, (base, run, path) in cases.items():
        tokenizer = AutoTokenizer.from_pretrained(base)
        ids = tokenizer(PROBE)["input_ids"]
        template = get_template("chatml", tokenizer).jinja()  # the run's (the base tokenizers have none)
        prompt = tokenizer.apply_chat_template(MESSAGES, chat_template=template, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt)["input_ids"]
        merged = _merged(base, run)
        expected[name] = {
            "ids": ids, "prompt": prompt, "prompt_ids": prompt_ids, "logits": _logits(merged, ids)[0].numpy(),
            "greedy": greedy(merged, prompt_ids, GENERATE), "template": template,
        }
        jobs.append({"path": str(path), "ids": ids, "text": PROBE, "messages": MESSAGES, "generate": GENERATE,
                     "logits": str(root / f"{name}-logits.npy")})
    results = run_llamacpp(jobs, root)
    for want, got in zip(expected.values(), results):
        got["expected"] = want
    return dict(zip(expected, results))


@pytest.mark.parametrize("kind", list(ARCHITECTURE))
def test_llama_cpp_runs_the_f16_file_as_the_merged_model(probed, kind):
    import numpy as np

    got = probed[kind]
    want = got["expected"]
    assert got["metadata"]["general.architecture"] == ARCHITECTURE[kind]
    assert got["tokens"] == want["ids"], "llama.cpp must tokenize the probe (special tokens too) as the run's tokenizer"
    assert got["n_vocab"] == want["logits"].shape[-1]
    # float16 weights, and llama.cpp's float16 dot products: 0.07-0.4% of the logits' range measured.
    scale = np.abs(want["logits"]).max()
    assert np.abs(got["logits"] - want["logits"]).max() < 0.01 * scale
    top2 = np.sort(want["logits"], axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.02 * scale  # where the merged model's choice is not a near tie
    assert clear.sum() >= len(clear) // 2 and (got["logits"].argmax(-1) == want["logits"].argmax(-1))[clear].all()

    assert got["metadata"]["tokenizer.chat_template"] == want["template"]
    assert got["prompt"] == want["prompt"]
    assert got["prompt_ids"] == want["prompt_ids"]
    assert got["generated"] == want["greedy"]


@pytest.mark.parametrize("quantization", ["q8_0", "q4_k_m"])
def test_llama_cpp_runs_the_quantized_file_within_its_error(probed, quantization):
    import numpy as np

    got = probed[quantization]
    want = got["expected"]
    assert got["tokens"] == want["ids"]
    assert got["metadata"]["general.file_type"] == {"q8_0": "7", "q4_k_m": "15"}[quantization]
    assert got["metadata"]["tokenizer.chat_template"] == want["template"]
    relative = np.linalg.norm(got["logits"] - want["logits"]) / np.linalg.norm(want["logits"])
    # measured: q8_0 1.7% (llama.cpp rounds the activations to 8 bits too), q4_k_m 18%; on 48 positions the next
    # token agrees at 96% and 65% (many of a random model's choices are near ties)
    assert 0 < relative < {"q8_0": 0.05, "q4_k_m": 0.25}[quantization]
    agree = (got["logits"].argmax(-1) == want["logits"].argmax(-1)).mean()
    assert agree >= {"q8_0": 0.9, "q4_k_m": 0.5}[quantization]
