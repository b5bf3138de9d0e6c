"""The vl plugin's families through the vllm engine (CPU build): --max-pixels reaches vLLM's own processor
(``ModelFamily.processor_kwargs`` as ``mm_processor_kwargs``), on the plugin's tiny Idefics3 with 64-wide heads.

Qwen2-VL and Qwen2.5-VL are not served here: vLLM's Qwen-VL models import transformers' torchvision image
processor, and this CPU environment has no torchvision (docs/vllm.md)."""

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; the README's test command runs these tests in .venv-vllm")
pytest.importorskip("tuneforge_vl", reason="the vl plugin is not installed here; the README's test command installs it in .venv-vllm")

import tuneforge_vl.plugin
import tuneforge_vllm.plugin
from tuneforge.api import ChatRequest, SamplingParams, create_engine
from tuneforge.testing import plugin_installed
from tuneforge.testing.vlm import image_data_url
from tuneforge_vl.testing.smolvlm import IMAGE_SEQ_LEN, TILE, tiny_smolvlm_dir

MAX_PIXELS = TILE * TILE  # one tile: an image is shrunk to it, not split
OPTIONS = {"max_model_len": 512, "enforce_eager": True}


@pytest.fixture(scope="module")
def idefics3_dir(tmp_path_factory):
    # Peaked logits (wide random weights): the two engines' kernels then agree on the greedy answers.
    return tiny_smolvlm_dir(tmp_path_factory.mktemp("vllm-vl") / "tiny-idefics3", architecture="idefics3", head_dim=64, initializer_range=0.2)


@pytest.fixture(scope="module")
def engines(idefics3_dir):
    """The vllm engine with --max-pixels, and the pt engine with and without it, on the same checkpoint."""
    with plugin_installed(tuneforge_vl.plugin, "vl", "tuneforge-vl", also=[(tuneforge_vllm.plugin, "vllm", "tuneforge-vllm")]):
        options = {"max_pixels": MAX_PIXELS}
        vllm = create_engine("vllm", idefics3_dir, family_options=options, **OPTIONS)
        pt = create_engine("pt", idefics3_dir, family_options=options, device="cpu", torch_dtype="float32")
        pt_default = create_engine("pt", idefics3_dir, device="cpu", torch_dtype="float32")
        try:
            yield vllm, pt, pt_default
        finally:
            pt_default.close()
            pt.close()
            vllm.close()


def ask(colour, size=(2 * TILE, 2 * TILE)) -> ChatRequest:
    content = [{"type": "image_url", "image_url": {"url": image_data_url(colour, size=size)}}, {"type": "text", "text": "What colour is it?"}]
    return ChatRequest(messages=[{"role": "user", "content": content}], sampling=SamplingParams(max_tokens=6, temperature=0))


def test_max_pixels_reaches_vllm_and_it_answers_as_the_pt_engine(engines):
    vllm, pt, pt_default = engines
    requests = [ask((220, 20, 20)), ask((20, 20, 220), size=(2 * TILE, TILE))]
    answers = [a for [a] in vllm.generate(requests)]
    expected = [a for [a] in pt.generate(requests)]
    default = [a for [a] in pt_default.generate(requests)]
    # vLLM counts the prompt it expanded itself: its processor shrank the images as the pt engine's did.
    assert [a.prompt_tokens for a in answers] == [a.prompt_tokens for a in expected]
    # --max-pixels changed that count: without it the images are split into 2x2 and 2x1 tiles beside the whole image
    # (each tile its image tokens after <fake_token_around_image><row_r_col_c>, a newline after each row).
    assert [d.prompt_tokens - a.prompt_tokens for a, d in zip(answers, default)] == [4 * (IMAGE_SEQ_LEN + 2) + 2, 2 * (IMAGE_SEQ_LEN + 2) + 1]
    assert [a.token_ids for a in answers] == [a.token_ids for a in expected]


@pytest.mark.skipif(__import__("importlib").util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_a_qwen_vl_model_is_refused_in_one_sentence_where_vllm_cannot_load_its_code(tmp_path):
    """vLLM's Qwen-VL code imports torchvision, which this CPU environment lacks: one sentence before any engine starts."""
    from tuneforge.api import TuneforgeError
    from tuneforge_vl.testing import tiny_qwen_vl_dir

    model = tiny_qwen_vl_dir(tmp_path / "tiny-qwen2.5-vl", "qwen2_5_vl", head_dim=64)
    with plugin_installed(tuneforge_vl.plugin, "vl", "tuneforge-vl", also=[(tuneforge_vllm.plugin, "vllm", "tuneforge-vllm")]):
        with pytest.raises(TuneforgeError) as info:
            create_engine("vllm", model, **OPTIONS)
    assert str(info.value) == (
        "vLLM cannot load its code for Qwen2_5_VLForConditionalGeneration here: it needs the Python package 'torchvision', "
        "which is missing (or does not load beside this torch); install it, or serve the model with --engine pt."
    )


def test_a_video_part_is_refused_in_one_sentence(engines):
    from tuneforge.api import TuneforgeError

    vllm = engines[0]
    content = [{"type": "video_url", "video_url": {"url": "/clips/standup.mp4"}}, {"type": "text", "text": "What happens?"}]
    with pytest.raises(TuneforgeError, match=r"This request has a video_url part, and the vllm engine passes images only to vLLM; send the video's frames as image_url parts, or use the pt engine"):
        vllm.generate([ChatRequest(messages=[{"role": "user", "content": content}], sampling=SamplingParams(max_tokens=2))])
