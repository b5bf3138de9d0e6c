"""Serving the plugin's families: the pt engine batches their image requests together and with
text-only ones (each answer the one the request gets alone), and each template's unexpanded_prompt
is what the model's processor expands into the template's prompt (what the vllm engine hands vLLM,
which expands it the same way)."""

import pytest
from imageprobes import BLUE, GREEN, RED, image, reference_template, text

from tuneforge.api import ChatRequest, SamplingParams, create_engine, images_of, load_image, resolve_bundle
from tuneforge.testing.vlm import image_file
from tuneforge_vl.testing.internvl import tiny_internvl_dir
from tuneforge_vl.testing.qwen_vl import tiny_qwen_vl_dir
from tuneforge_vl.testing.smolvlm import tiny_smolvlm_dir

CHECKPOINTS = {
    "smolvlm": lambda path: tiny_smolvlm_dir(path, architecture="smolvlm", chat_template=reference_template("smolvlm.jinja")),
    "internvl3": lambda path: tiny_internvl_dir(path, chat_template=reference_template("internvl3-hf.jinja")),
    "qwen2.5-vl": lambda path: tiny_qwen_vl_dir(path, "qwen2_5_vl", chat_template=reference_template("Qwen2.5-VL-7B-Instruct.jinja")),
}


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def checkpoint(request, tmp_path_factory):
    return CHECKPOINTS[request.param](tmp_path_factory.mktemp(request.param) / request.param)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    return [image_file(folder / f"{n}.png", colour, size) for n, (colour, size) in enumerate([(RED, (64, 32)), (BLUE, (24, 60)), (GREEN, (20, 20))])]


def requests(pictures) -> list[ChatRequest]:
    greedy = SamplingParams(max_tokens=5, temperature=0)
    contents = [
        [image(pictures[0]), text("What colour is it?")],
        "Say something about colours.",
        [text("Compare "), image(pictures[1]), text(" and "), image(pictures[2])],
        [image(pictures[2]), text("And this one?")],
    ]
    return [ChatRequest(messages=[{"role": "user", "content": content}], sampling=greedy) for content in contents]


def test_image_requests_share_a_batch_and_answer_as_alone(manager, checkpoint, pictures):
    engine = create_engine("pt", checkpoint, device="cpu", batch_size=8)
    try:
        batch = requests(pictures)
        alone = [engine.generate([request])[0][0] for request in batch]
        runs = engine.scheduler.batches_run
        together = [answer for [answer] in engine.generate(batch)]
        assert engine.scheduler.batches_run == runs + 1  # one generate() call for the four
        assert [a.token_ids for a in together] == [a.token_ids for a in alone]
        assert [a.prompt_tokens for a in together] == [a.prompt_tokens for a in alone]
    finally:
        engine.close()


def test_the_processor_expands_the_unexpanded_prompt_into_the_prompt(manager, checkpoint, pictures):
    bundle = resolve_bundle(checkpoint)
    template, processor = bundle.template, bundle.processor
    for request in requests(pictures):
        messages = list(request.messages)
        unexpanded = template.unexpanded_prompt(messages)
        images = [load_image(url) for url in images_of(messages)]
        nested = bundle.family.name == "smolvlm"
        given = {"images": [images] if nested else images} if images else {}
        expanded = processor(text=[processor.tokenizer.decode(unexpanded)], add_special_tokens=False, return_tensors="pt", **given)
        assert expanded["input_ids"][0].tolist() == template.prompt(messages), messages
