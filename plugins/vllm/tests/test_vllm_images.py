"""Images through the vllm engine (CPU build): image_url parts reach vLLM's multimodal input beside
the template's ids, on the test-only tiny Idefics3 (tuneforge.testing.vlm) with 64-wide heads."""

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; the README's test command runs these tests in .venv-vllm")

import contextlib

import tuneforge.testing.vlm_plugin as vlm_plugin
import tuneforge_vllm.plugin
from tuneforge.api import ChatRequest, SamplingParams, TuneforgeError, create_engine
from tuneforge.testing import plugin_installed
from tuneforge.testing.vlm import IMAGE_SEQ_LEN, image_data_url, tiny_vlm_dir

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)
OPTIONS = {"max_model_len": 512, "enforce_eager": True}


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    # Peaked logits (wide random weights): the two engines' kernels then agree on the greedy answers.
    return tiny_vlm_dir(tmp_path_factory.mktemp("vllm-vlm") / "tiny-vlm", head_dim=64, initializer_range=0.2)


@contextlib.contextmanager
def installed(module, name: str):
    """The core's plugins, the vllm plugin and ``module``, for the block."""
    with plugin_installed(module, name, f"tuneforge-{name}", also=[(tuneforge_vllm.plugin, "vllm", "tuneforge-vllm")]) as manager:
        yield manager


@pytest.fixture(scope="module")
def engines(vlm_dir):
    """The vllm engine and the pt engine on the same checkpoint."""
    with installed(vlm_plugin, "tiny-vlm"):
        vllm = create_engine("vllm", vlm_dir, **OPTIONS)
        pt = create_engine("pt", vlm_dir, device="cpu", torch_dtype="float32")
        try:
            yield vllm, pt
        finally:
            pt.close()
            vllm.close()


def ask(*parts, max_tokens: int = 6) -> ChatRequest:
    content = [{"type": "image_url", "image_url": {"url": p}} if p.startswith("data:") else {"type": "text", "text": p} for p in parts]
    return ChatRequest(messages=[{"role": "user", "content": content}], sampling=SamplingParams(max_tokens=max_tokens, temperature=0))


REQUESTS = [
    ask(image_data_url(RED), "What colour is it?"),
    ask("Say something about colours."),
    ask(image_data_url(GREEN, size=(16, 48)), image_data_url(BLUE), "Compare the two pictures."),
    ask(image_data_url(BLUE), "What colour is it?"),
]


def test_images_reach_vllm_and_it_answers_as_the_pt_engine(engines):
    vllm, pt = engines
    answers = [a for [a] in vllm.generate(REQUESTS)]
    expected = [a for [a] in pt.generate(REQUESTS)]
    # The same prompt (the image tokens included), and the images reached both models.
    assert [a.prompt_tokens for a in answers] == [a.prompt_tokens for a in expected]
    assert answers[0].prompt_tokens > IMAGE_SEQ_LEN + 10
    # The same greedy answers, but for a near-tie of the random model late in one (the float32 kernels differ in the last bits).
    assert all(a.token_ids[:4] == b.token_ids[:4] for a, b in zip(answers, expected)), [(a.token_ids, b.token_ids) for a, b in zip(answers, expected)]
    assert sum(a.token_ids == b.token_ids for a, b in zip(answers, expected)) >= 3
    assert answers[0].token_ids != answers[3].token_ids  # the same question about another picture
    # One at a time, the same answers as together.
    assert [vllm.generate([r])[0][0].token_ids for r in REQUESTS] == [a.token_ids for a in answers]


def test_a_streamed_answer_with_an_image(engines):
    vllm, _ = engines
    request = REQUESTS[3]
    [[whole]] = vllm.generate([request])
    stream = vllm.stream(request)
    deltas = []
    try:
        while True:
            deltas.append(next(stream))
    except StopIteration as end:
        completion = end.value
    assert "".join(deltas) == whole.text and completion.token_ids == whole.token_ids


def test_a_remote_image_is_refused_with_a_sentence(engines):
    vllm, _ = engines
    request = ChatRequest(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, {"type": "text", "text": "Hi"}]}], sampling=SamplingParams(max_tokens=4))
    with pytest.raises(TuneforgeError, match=r"^The image URL 'https://example.com/cat.png' is remote, and tuneforge fetches nothing; send it as a data:image/\.\.\.;base64 URL\.$"):
        vllm.generate([request])


def pictures_plugin():
    """A test plugin whose template 'chatml-pictures' says it takes images (ChatML otherwise)."""
    import types

    from tuneforge.api import CHATML, ChatTemplate, hookimpl

    def build(tokenizer):
        template = CHATML.build(tokenizer)
        template.name, template.modalities = "chatml-pictures", ("text", "image")
        return template

    @hookimpl
    def tuneforge_chat_templates():
        yield ChatTemplate(name="chatml-pictures", description="ChatML that takes images (tests only)", build=build)

    module = types.ModuleType("pictures_plugin")
    module.TUNEFORGE_API = "1.0"
    module.tuneforge_chat_templates = tuneforge_chat_templates
    return module


def test_an_architecture_vllm_serves_no_images_for_is_refused_at_start(vllm_tiny_dir):
    """A Llama served with a template that takes images: vLLM has no image input for it, so the engine says so before vLLM starts."""
    with installed(pictures_plugin(), "pictures"):
        with pytest.raises(TuneforgeError) as refused:
            create_engine("vllm", vllm_tiny_dir, template="chatml-pictures", allow_template_drift=True, **OPTIONS)
    assert str(refused.value) == (
        f"'{vllm_tiny_dir}' (LlamaForCausalLM) takes images, but vLLM serves no images for that architecture; "
        f"serve it with --engine pt, or use a family vLLM lists among its multimodal models."
    )


def test_a_template_without_an_unexpanded_prompt_is_refused_at_start(vlm_dir):
    """vLLM expands each image's placeholder itself: a template that gives only expanded ids cannot place images there."""
    with installed(pictures_plugin(), "pictures"):
        with pytest.raises(TuneforgeError) as refused:
            create_engine("vllm", vlm_dir, template="chatml-pictures", allow_template_drift=True, **OPTIONS)
    assert str(refused.value) == (
        f"The template 'chatml-pictures' of '{vlm_dir}' takes images but gives no unexpanded_prompt (each image as the one placeholder "
        f"its processor expands), which vLLM needs to place them; serve it with --engine pt, or add unexpanded_prompt to the template."
    )
