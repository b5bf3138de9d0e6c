"""LoRA fine-tuning of each Qwen-VL family on image rows through the CLI, and the pt engine
answering a request with an image_url part from the trained run."""

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from tuneforge.api import ChatRequest, SamplingParams, create_engine
from tuneforge.testing import run_cli
from tuneforge.testing.vlm import image_data_url, image_file
from tuneforge_vl.testing.qwen_vl import tiny_qwen_vl_dir

REFERENCE = Path(__file__).parent / "reference"
FAMILIES = {  # model type: (family, template, the official template its checkpoint carries)
    "qwen2_vl": ("qwen2-vl", "qwen2_vl", "Qwen2-VL-7B-Instruct.jinja"),
    "qwen2_5_vl": ("qwen2.5-vl", "qwen2_vl", "Qwen2.5-VL-7B-Instruct.jinja"),
    "qwen3_vl": ("qwen3-vl", "qwen3_vl", "Qwen3-VL-8B-Instruct.jinja"),
    "qwen3_vl_moe": ("qwen3-vl-moe", "qwen3_vl", "Qwen3-VL-8B-Instruct.jinja"),
}
RED, BLUE = (220, 20, 20), (20, 20, 220)
QUESTION = "What colour is the picture?"
SIZE = (112, 112)  # 4 image tokens at the tiny processors' pixel bound


def image_row(image: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": answer},
        ]
    }


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory):
    """A LoRA run of 30 steps on two picture rows, for each family: (model type, output directory, log)."""
    import tuneforge_vl.plugin
    from tuneforge.testing import plugin_installed

    model_type = request.param
    folder = tmp_path_factory.mktemp(model_type)
    model = tiny_qwen_vl_dir(folder / "model", model_type, chat_template=(REFERENCE / FAMILIES[model_type][2]).read_text())
    rows = [image_row(image_file(folder / "red.png", RED, SIZE), "Red."), image_row(image_file(folder / "blue.png", BLUE, SIZE), "Blue.")]
    data = folder / "pictures.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = [
        "sft", "--model", model, "--dataset", data, "--output-dir", folder / "out", "--train-type", "lora",
        "--max-steps", 30, "--learning-rate", 1e-2, "--per-device-batch-size", 2, "--logging-steps", 5,
        "--save-steps", 1000, "--max-length", 64, "--seed", 0,
    ]
    with plugin_installed(tuneforge_vl.plugin, "vl", "tuneforge-vl"):
        run_cli(*args)  # click's CliRunner, in this process
    return model_type, folder / "out"


def test_lora_on_image_rows_lowers_the_loss_and_adapts_only_the_language_model(trained):
    model_type, out = trained
    family, template, _ = FAMILIES[model_type]
    run = json.loads((out / "tuneforge_run.json").read_text())
    assert (run["model_family"], run["template"]) == (family, template)
    # The checkpoint carries the official template: the parity check ran before training and found no difference.
    assert run["template_parity"]["differences"] == 0 and run["template_parity"]["compared"] >= 8
    assert run["data"]["train"]["learned_tokens"] > 0
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) >= 4 and losses[-1] < losses[0] - 1.0, losses
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert names and all(".language_model." in name for name in names), names[:5]
    # The language model's linear layers: attention and MLP, or attention alone where the experts are fused (MoE).
    expected = {"q_proj", "k_proj", "v_proj", "o_proj"} | (set() if model_type.endswith("moe") else {"gate_proj", "up_proj", "down_proj"})
    assert {name.split(".")[-3] for name in names if "lora_A" in name} == expected


def test_the_pt_engine_answers_a_request_with_an_image(trained, manager):
    model_type, out = trained
    content = [{"type": "image_url", "image_url": {"url": image_data_url(RED, SIZE)}}, {"type": "text", "text": QUESTION}]
    request = ChatRequest(messages=[{"role": "user", "content": content}], sampling=SamplingParams(max_tokens=4, temperature=0))
    text_only = ChatRequest(messages=[{"role": "user", "content": QUESTION}], sampling=SamplingParams(max_tokens=4, temperature=0))
    engine = create_engine("pt", str(out), device="cpu")
    try:
        [[answer]], [[plain]] = engine.generate([request]), engine.generate([text_only])
    finally:
        engine.close()
    # The picture is <|vision_start|>, its 4 image tokens and <|vision_end|> in the prompt, its pixels beside it.
    assert answer.prompt_tokens == plain.prompt_tokens + 6
    assert answer.completion_tokens >= 1 and isinstance(answer.text, str)


def test_export_writes_a_standalone_checkpoint_with_its_processor(trained, manager, tmp_path):
    """The merged model keeps the processor (image settings) and the template's Jinja, and answers pictures."""
    from transformers import AutoConfig

    from tuneforge_vl.qwen_vl import load_processor

    model_type, out = trained
    exported = tmp_path / "exported"
    run_cli("export", "--model", out, "--output-dir", exported)
    assert AutoConfig.from_pretrained(exported).model_type == model_type
    processor = load_processor(str(exported))
    assert processor.image_processor.size["longest_edge"] == load_processor(str(out)).image_processor.size["longest_edge"]
    assert processor.tokenizer.chat_template.startswith("{%- macro render_content(content, number, role) %}")
    content = [{"type": "image_url", "image_url": {"url": image_data_url(BLUE, SIZE)}}, {"type": "text", "text": QUESTION}]
    request = ChatRequest(messages=[{"role": "user", "content": content}], sampling=SamplingParams(max_tokens=3, temperature=0))
    answers = []
    for path in (out, exported):
        engine = create_engine("pt", str(path), device="cpu")
        try:
            answers.append(engine.generate([request])[0][0])
        finally:
            engine.close()
    assert answers[1].token_ids == answers[0].token_ids and answers[1].prompt_tokens == answers[0].prompt_tokens


@pytest.mark.parametrize("trained", ["qwen2_5_vl"], indirect=True)
def test_deploy_answers_an_image_url_part_through_the_openai_client(trained, tmp_path):
    """`tuneforge deploy` of the trained run (the installed plugin): a picture as a data: URL, through the official client."""
    from tuneforge.testing.server import Server

    _, out = trained
    server = Server(["--model", out, "--served-model-name", "qwen-vl", "--engine", "pt"], tmp_path / "server.log", env={"TUNEFORGE_LOAD_PLUGINS": "vl"})
    try:
        client = server.client()
        content = [{"type": "image_url", "image_url": {"url": image_data_url(RED, SIZE)}}, {"type": "text", "text": QUESTION}]
        reply = client.chat.completions.create(model="qwen-vl", messages=[{"role": "user", "content": content}], max_tokens=3, temperature=0)
        plain = client.chat.completions.create(model="qwen-vl", messages=[{"role": "user", "content": QUESTION}], max_tokens=3, temperature=0)
        assert reply.usage.prompt_tokens == plain.usage.prompt_tokens + 6  # the picture: its 4 image tokens and 2 markers
        assert reply.usage.completion_tokens >= 1 and reply.choices[0].message.content is not None
    finally:
        assert server.stop() == 0, server.tail()


def short_run(model, data, out, *extra):
    """A 2-step LoRA run (the caller has the plugin installed: the ``manager`` fixture)."""
    run_cli("sft", "--model", model, "--dataset", data, "--output-dir", out, "--train-type", "lora", "--max-steps", 2,
            "--per-device-batch-size", 2, "--save-steps", 1000, "--max-length", 64, "--seed", 0, *extra)
    return json.loads((Path(out) / "tuneforge_run.json").read_text())


@pytest.fixture(scope="module")
def picture_rows(tmp_path_factory):
    """A tiny Qwen2.5-VL with its official template, and two rows of 112 x 112 pictures (4 image tokens each)."""
    folder = tmp_path_factory.mktemp("qwen2.5-vl-rows")
    model = tiny_qwen_vl_dir(folder / "model", "qwen2_5_vl", chat_template=(REFERENCE / FAMILIES["qwen2_5_vl"][2]).read_text())
    rows = [image_row(image_file(folder / "red.png", RED, SIZE), "Red."), image_row(image_file(folder / "blue.png", BLUE, SIZE), "Blue.")]
    data = folder / "pictures.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return model, data


def test_max_pixels_on_the_command_line_changes_the_image_tokens_of_training_and_serving(picture_rows, manager, tmp_path):
    model, data = picture_rows
    default = short_run(model, data, tmp_path / "default")
    smaller = short_run(model, data, tmp_path / "small", "--max-pixels", 28 * 28)
    # Each picture becomes 1 image token instead of 4: 3 fewer in each of the 2 rows.
    assert default["data"]["train"]["tokens"] - smaller["data"]["train"]["tokens"] == 6
    assert smaller["options"]["model_families"] == {"name": "qwen2.5-vl", "options": {"max_pixels": 784, "min_pixels": None, "video_fps": 2.0, "max_frames": 768}}
    # The run is served with the setting it was trained with.
    content = [{"type": "image_url", "image_url": {"url": image_data_url(RED, SIZE)}}, {"type": "text", "text": QUESTION}]
    request = ChatRequest(messages=[{"role": "user", "content": content}], sampling=SamplingParams(max_tokens=1, temperature=0))
    prompts = []
    for out in ("default", "small"):
        engine = create_engine("pt", str(tmp_path / out), device="cpu")
        try:
            prompts.append(engine.generate([request])[0][0].prompt_tokens)
        finally:
            engine.close()
    assert prompts[0] - prompts[1] == 3


def test_a_trained_aligner_is_the_merger_alone(picture_rows, manager, tmp_path):
    """--no-freeze-aligner trains the patch merger whole (saved in the adapter); the rest of the vision tower stays frozen."""
    model, data = picture_rows
    short_run(model, data, tmp_path / "out", "--no-freeze-aligner")
    with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "pt") as weights:
        whole = {name for name in weights.keys() if "lora_" not in name}
    assert whole and all(".visual.merger." in name for name in whole), sorted(whole)[:5]
