"""LoRA fine-tuning on image rows and answering image_url requests, for InternVL3 and SmolVLM/Idefics3
(tiny random-weight checkpoints; the CLI through click's CliRunner, the pt engine as a server uses it)."""

import json
import re
from pathlib import Path

import pytest
from imageprobes import BLUE, RED, reference_template
from safetensors import safe_open

from tuneforge.api import ChatRequest, SamplingParams, create_engine
from tuneforge.testing import run_cli
from tuneforge.testing.vlm import image_data_url, image_file
from tuneforge_vl.testing import tiny_internvl_dir, tiny_smolvlm_dir

QUESTION = "What colour is the picture?"
CHECKPOINTS = {
    "internvl3": lambda folder: tiny_internvl_dir(folder, chat_template=reference_template("internvl3-hf.jinja")),
    "smolvlm": lambda folder: tiny_smolvlm_dir(folder, chat_template=reference_template("smolvlm.jinja")),
    "idefics3": lambda folder: tiny_smolvlm_dir(folder, architecture="idefics3", chat_template=reference_template("smolvlm.jinja")),
}
LANGUAGE_MODEL = {"internvl3": ".language_model.", "smolvlm": ".text_model.", "idefics3": ".text_model."}


def image_row(image: str, answer: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": QUESTION}]
    return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]}


def sft(*args):
    """``tuneforge sft ARGS`` in this process (click's CliRunner, through tuneforge.testing.run_cli)."""
    return run_cli("sft", *args)


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def trained(request, tmp_path_factory):
    """A LoRA run on four picture rows (two colours, two sizes), 30 steps."""
    from tuneforge.testing import plugin_installed

    import tuneforge_vl.plugin

    family = request.param
    folder = tmp_path_factory.mktemp(f"{family}-run")
    model = CHECKPOINTS[family](folder / "model")
    rows = [
        image_row(image_file(folder / f"{name}-{width}.png", colour, (width, 32)), answer)
        for name, colour, answer in (("red", RED, "Red."), ("blue", BLUE, "Blue."))
        for width in (32, 64)
    ]
    data = folder / "pictures.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with plugin_installed(tuneforge_vl.plugin, "vl", "tuneforge-vl"):
        result = sft(
            "--model", model, "--dataset", data, "--output-dir", folder / "out", "--train-type", "lora", "--max-steps", 30,
            "--learning-rate", 5e-3, "--per-device-batch-size", 2, "--logging-steps", 5, "--save-steps", 1000,
            "--max-length", 256, "--seed", 0,
        )
    return family, folder / "out", result.output


def test_lora_on_image_rows_lowers_the_loss_and_adapts_only_the_language_model(trained):
    family, out, output = trained
    run = json.loads((out / "tuneforge_run.json").read_text())
    assert run["model_family"] == family and run["template"] in ("internvl3", "smolvlm")
    losses = [float(x) for x in re.findall(r"'loss': '?([0-9.]+)", output)]
    assert len(losses) >= 3, output[-2000:]
    assert losses[-1] < losses[0] - 0.5, losses  # from ln(vocabulary) on a random model
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert names and all(LANGUAGE_MODEL[family] in name for name in names), names[:5]


def test_the_pt_engine_answers_an_image_url_part(manager, trained):
    family, out, _ = trained
    engine = create_engine("pt", str(out), device="cpu")
    try:
        answers = []
        for colour in (RED, BLUE):
            content = [{"type": "image_url", "image_url": {"url": image_data_url(colour, (32, 32))}}, {"type": "text", "text": QUESTION}]
            request = ChatRequest(messages=[{"role": "user", "content": content}], sampling=SamplingParams(max_tokens=4, temperature=0))
            answers.append(engine.generate([request])[0][0])
    finally:
        engine.close()
    red, blue = answers
    assert red.prompt_tokens > 10  # the image's tokens are in the prompt
    assert red.text.strip().startswith("Red") and blue.text.strip().startswith("Blue"), (red.text, blue.text)


@pytest.mark.parametrize("family", ["internvl3", "smolvlm"])
def test_max_pixels_on_the_command_line_shrinks_the_image_tokens(manager, family, tmp_path):
    """--max-pixels reaches the processor: one 64x64 picture becomes one tile instead of four and a thumbnail."""
    model = CHECKPOINTS[family](tmp_path / "model")
    data = tmp_path / "pictures.jsonl"
    data.write_text(json.dumps(image_row(image_file(tmp_path / "red.png", RED, (64, 64)), "Red.")) + "\n")

    def tokens(*flags):
        out = tmp_path / f"out{len(flags)}"
        sft("--model", model, "--dataset", data, "--output-dir", out, "--train-type", "lora", "--max-steps", 1, "--max-length", 256, *flags)
        run = json.loads((out / "tuneforge_run.json").read_text())
        return run["data"]["train"]["tokens"]

    # 2x2 tiles and a thumbnail (the whole image) of 4 tokens each, against one tile
    assert tokens() - tokens("--max-pixels", 1024) >= 4 * 4
