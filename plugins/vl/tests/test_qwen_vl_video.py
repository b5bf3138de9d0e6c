"""Video parts for Qwen2-VL, Qwen2.5-VL and Qwen3-VL: frames read and sampled, the template against the
official one, video tokens counted from the grid (Qwen3-VL: with each patch's time) and never learned,
the refusals (row file and line, the fix).

What needs transformers' video processor (torchvision) is skipped where it does not import; on a
machine with torchvision: ``pytest plugins/vl/tests/test_qwen_vl_video.py``."""

import json
from pathlib import Path

import pytest
import torch

from tuneforge.api import IGNORE_INDEX, SegmentTemplate
from tuneforge.testing import run_cli
from tuneforge.testing.vlm import image_file
from tuneforge_vl.options import ImageOptions
from tuneforge_vl.processors import has_video_processors
from tuneforge_vl.qwen_vl import VIDEO_PAD, build_qwen2_vl, build_qwen3_vl, frame_timestamps, grid_token_counts, load_processor
from tuneforge_vl.testing.qwen_vl import tiny_qwen_vl_dir
from tuneforge_vl.videos import VideoSampling, decoder, load_video, sample_indices

REFERENCE = Path(__file__).parent / "reference"
CASES = {"qwen2_vl": "Qwen2-VL-7B-Instruct.jinja", "qwen2_5_vl": "Qwen2.5-VL-7B-Instruct.jinja", "qwen3_vl": "Qwen3-VL-8B-Instruct.jinja"}
BUILD = {"qwen2_vl": build_qwen2_vl, "qwen2_5_vl": build_qwen2_vl, "qwen3_vl": build_qwen3_vl}
# the grid of the 4-frame clip of 56 x 56 frames: 2 temporal patches of 4 x 4 patches of 14 pixels (Qwen3-VL: 2 x 2 of 16, within its bounds)
GRID = {"qwen2_vl": [2, 4, 4], "qwen2_5_vl": [2, 4, 4], "qwen3_vl": [2, 2, 2]}
RED, GREEN, BLUE, WHITE = (220, 20, 20), (20, 200, 20), (20, 20, 220), (240, 240, 240)
needs_video_processor = pytest.mark.skipif(
    not has_video_processors(), reason="transformers builds its video processor only where torchvision imports (not here)"
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-vl-video")
    return {case: tiny_qwen_vl_dir(root / case, case, chat_template=(REFERENCE / name).read_text()) for case, name in CASES.items()}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A directory of 4 tiny frames, in name order."""
    folder = tmp_path_factory.mktemp("clip")
    for n, colour in enumerate((RED, GREEN, BLUE, WHITE), start=1):
        image_file(folder / f"{n:04d}.png", colour, (56, 56))
    return folder


def video(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def conversation(url: str) -> list[dict]:
    return [
        {"role": "user", "content": [video(url), {"type": "text", "text": "What colours pass?"}]},
        {"role": "assistant", "content": "Red, green, blue, white."},
    ]


def as_official(messages):
    """The parts as the official template reads videos: ``{"type": "video", "video": ...}``."""
    return [
        {**m, "content": [{"type": "video", "video": p["video_url"]["url"]} if p.get("type") == "video_url" else p for p in m["content"]]}
        if isinstance(m["content"], list) else m
        for m in messages
    ]


@pytest.mark.parametrize(
    "total, source_fps, fps, max_frames, expected",
    [
        (60, 30, 2, 768, [0, 20, 39, 59]),  # 2 s at 2 fps: 4 frames
        (300, 30, 2, 768, [round(i * 299 / 19) for i in range(20)]),  # 10 s: 20 frames, first to last
        (300, 30, 2, 8, [round(i * 299 / 7) for i in range(8)]),  # --max-frames
        (20, 10, 1, 768, [0, 6, 13, 19]),  # at least 4 frames
        (3, 30, 2, 768, [0, 2]),  # never more than the video has, a multiple of 2
        (1, 30, 2, 768, [0]),  # one frame: the processor repeats it
    ],
)
def test_video_files_are_sampled_as_qwen_samples_them(total, source_fps, fps, max_frames, expected):
    indices = sample_indices(total, source_fps, fps, max_frames)
    assert indices == expected
    assert len(indices) % 2 == 0 or total == 1


def test_a_video_given_as_frames_keeps_them_in_order(clip):
    frames = sorted(clip.iterdir())
    by_list = load_video(json.dumps([f"file://{frames[0]}", str(frames[1]), str(frames[2])]))
    assert [image.getpixel((5, 5)) for image in by_list.frames] == [RED, GREEN, BLUE]
    by_folder = load_video(str(clip), VideoSampling(fps=4.0))
    assert [image.getpixel((5, 5)) for image in by_folder.frames] == [RED, GREEN, BLUE, WHITE]
    assert by_folder.fps == 4.0  # frames stand for --video-fps
    thinned = load_video(str(clip), VideoSampling(max_frames=2))
    assert [image.getpixel((5, 5)) for image in thinned.frames] == [RED, BLUE]


def test_a_missing_frame_or_an_undecodable_video_is_refused_with_the_fix(clip, tmp_path):
    from tuneforge.api import TemplateError

    with pytest.raises(TemplateError, match=r"The video frame '.*9999.png' does not exist; fix the frame's path"):
        load_video(json.dumps([str(clip / "0001.png"), str(clip / "9999.png")]))
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a real video")
    if decoder() is None:
        message = "no video decoder (OpenCV, PyAV or torchvision) is installed; pip install opencv-python-headless, or give the video as its frames"
    else:
        message = "could not be decoded with"
    with pytest.raises(TemplateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_video(str(tmp_path / "clip.mp4"))


@pytest.mark.parametrize("case", CASES)
def test_the_template_renders_a_video_as_the_official_template(checkpoints, clip, case):
    processor = load_processor(checkpoints[case])
    template = BUILD[case](processor)
    tokenizer = processor.tokenizer
    messages = conversation(str(clip))
    messages[0]["content"].insert(0, {"type": "image_url", "image_url": {"url": str(clip / "0001.png")}})
    for part, generation in ((messages, False), (messages[:-1], True)):
        official = tokenizer.apply_chat_template(as_official(part), tokenize=False, add_generation_prompt=generation)
        assert template.text(part, add_generation_prompt=generation) == official
        assert "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>What colours" in official
    ours = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template.jinja())
    assert ours == template.text(messages)
    assert "video" in template.modalities


@pytest.mark.parametrize("case", ["qwen2_vl", "qwen2_5_vl"])
def test_video_tokens_are_counted_from_the_grid_and_never_learned(checkpoints, clip, case):
    template = build_qwen2_vl(load_processor(checkpoints[case]))
    grid = torch.tensor([[2, 4, 6]])  # 4 frames (2 temporal patches) of 4 x 6 patches
    assert grid_token_counts(grid, 2) == [12]
    messages = conversation(str(clip))
    rendered = SegmentTemplate.encode(template, messages)  # before the pads are expanded
    ids, labels = template._expand(rendered.input_ids, rendered.labels, [], grid_token_counts(grid, 2))
    pads = [i for i, token in enumerate(ids) if token == template.video_id]
    assert len(pads) == 12 and pads == list(range(pads[0], pads[0] + 12))
    assert all(labels[i] == IGNORE_INDEX for i in pads)
    assert template.tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) == "Red, green, blue, white.<|im_end|>"


def test_qwen3_vl_writes_each_temporal_patch_with_its_time_and_learns_none_of_it(checkpoints):
    """As ``Qwen3VLProcessor.replace_video_token``: the pad becomes, per temporal patch, ``<t seconds>``, then the
    patch's pads between ``<|vision_start|>`` and ``<|vision_end|>`` (inside the template's own pair)."""
    template = build_qwen3_vl(load_processor(checkpoints["qwen3_vl"]))
    assert frame_timestamps(4, 2.0, 2) == [0.25, 1.25] and frame_timestamps(3, 1.0, 2) == [0.5, 2.0]
    grid = torch.tensor([[2, 4, 6]])  # 4 frames (2 temporal patches) of 4 x 6 patches, shot at 2 a second
    [placeholder] = template.video_placeholders({"video_grid_thw": grid}, [(4, 2.0)])
    patch = "<|vision_start|>" + "<|video_pad|>" * 6 + "<|vision_end|>"
    assert template.tokenizer.decode(placeholder) == f"<0.2 seconds>{patch}<1.2 seconds>{patch}"
    messages = conversation("clip")
    rendered = SegmentTemplate.encode(template, messages)
    ids, labels = template._expand(rendered.input_ids, rendered.labels, [], [placeholder])
    start = ids.index(template.video_id) - len(template.tokenizer.encode("<0.2 seconds><|vision_start|>", add_special_tokens=False))
    assert ids[start:start + len(placeholder)] == placeholder and ids.count(template.video_id) == 12
    assert all(label == IGNORE_INDEX for label in labels[start:start + len(placeholder)])
    assert template.tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) == "Red, green, blue, white.<|im_end|>"


def test_options_out_of_range_are_refused(checkpoints):
    from tuneforge.api import TuneforgeError

    with pytest.raises(TuneforgeError, match=r"--video-fps is 0.0; give a positive number"):
        load_processor(checkpoints["qwen2_vl"], options=ImageOptions(video_fps=0.0))
    processor = load_processor(checkpoints["qwen2_vl"], options=ImageOptions(video_fps=1.0, max_frames=2))
    assert build_qwen2_vl(processor).video_sampling == VideoSampling(1.0, 2)


def sft_args(model, data, out, *extra):
    return [
        "sft", "--model", model, "--dataset", data, "--output-dir", out, "--train-type", "lora", "--max-steps", 3,
        "--learning-rate", 1e-2, "--per-device-batch-size", 2, "--logging-steps", 1, "--save-steps", 1000,
        "--max-length", 128, "--seed", 0, *extra,
    ]


def test_a_video_row_that_cannot_be_encoded_stops_with_its_file_line_and_fix(checkpoints, clip, tmp_path):
    import tuneforge_vl.plugin
    from tuneforge.testing import plugin_installed

    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    rows = [{"messages": conversation(str(clip))}, {"messages": conversation("clip.mp4")}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with plugin_installed(tuneforge_vl.plugin, "vl", "tuneforge-vl"):
        result = run_cli(*sft_args(checkpoints["qwen2_vl"], data, tmp_path / "out"), ok=False)
    assert result.exit_code != 0
    if not has_video_processors():
        assert "rows.jsonl line 1: Template 'qwen2_vl' cannot encode video_url parts here: transformers builds video processors only where torchvision imports; pip install torchvision" in result.output
    elif decoder() is None:
        assert "rows.jsonl line 2: The video " in result.output and "pip install opencv-python-headless" in result.output
    else:
        assert "rows.jsonl line 2: The video " in result.output and "could not be decoded with" in result.output
    assert not (tmp_path / "out").exists()


# -- with transformers' video processor (torchvision) ------------------------------------------------------


@needs_video_processor
@pytest.mark.parametrize("case", CASES)
def test_video_encoding_equals_the_official_processor(checkpoints, clip, case):
    from transformers.video_utils import VideoMetadata

    processor = load_processor(checkpoints[case])
    template = BUILD[case](processor)
    messages = conversation(str(clip))
    encoded = template.encode(messages)
    loaded = load_video(str(clip), template.video_sampling)
    rendered = processor.tokenizer.apply_chat_template(as_official(messages), tokenize=False)
    metadata = [VideoMetadata(total_num_frames=4, fps=loaded.fps, frames_indices=[0, 1, 2, 3])]
    expected = processor(text=[rendered], videos=[loaded.frames], video_metadata=metadata, do_sample_frames=False, return_tensors="pt")
    assert encoded.input_ids == expected["input_ids"][0].tolist()
    for key in ("pixel_values_videos", "video_grid_thw"):
        assert torch.equal(encoded.extras[key], expected[key])
    t, h, w = GRID[case]
    assert encoded.extras["video_grid_thw"].tolist() == [[t, h, w]]
    assert encoded.input_ids.count(template.video_id) == t * h * w // 4
    if case == "qwen3_vl":
        assert "<0.2 seconds><|vision_start|><|video_pad|>" in processor.tokenizer.decode(encoded.input_ids)
    if case == "qwen2_5_vl":
        assert encoded.extras["second_per_grid_ts"].tolist() == pytest.approx(torch.as_tensor(expected["second_per_grid_ts"]).tolist())
    else:
        assert "second_per_grid_ts" not in encoded.extras


@needs_video_processor
def test_video_decoded_from_a_file_with_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 4.0, (32, 32))
    for value in (0, 80, 160, 240, 0, 80, 160, 240):
        writer.write(np.full((32, 32, 3), value, dtype=np.uint8))
    writer.release()
    loaded = load_video(path, VideoSampling(fps=2.0))  # 2 s at 4 fps: 4 frames at 2 fps
    assert len(loaded.frames) == 4 and loaded.fps == pytest.approx(2.0)


@needs_video_processor
@pytest.mark.parametrize("case", CASES)
def test_lora_on_video_rows_packed_trains_and_the_engine_answers_a_video(checkpoints, clip, case, tmp_path, manager):
    import tuneforge_vl.plugin  # noqa: F401  (the manager fixture holds it)
    from tuneforge.api import ChatRequest, SamplingParams, create_engine

    frames = sorted(str(p) for p in clip.iterdir())
    rows = [
        {"messages": conversation(str(clip))},
        {"conversations": [{"from": "human", "value": "<video>What colours pass?"}, {"from": "gpt", "value": "Blue, white."}], "videos": [frames[2:]]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": frames[0]}}, {"type": "text", "text": "Colour?"}]}, {"role": "assistant", "content": "Red."}]},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_cli(*sft_args(checkpoints[case], data, tmp_path / "out", "--packing", "--max-frames", 4))
    assert "not packed" not in result.output
    run = json.loads((tmp_path / "out" / "tuneforge_run.json").read_text())
    assert run["data"]["train"]["learned_tokens"] > 0
    state = json.loads(next((tmp_path / "out").glob("checkpoint-*/trainer_state.json")).read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses))), losses

    request = ChatRequest(messages=conversation(str(clip))[:1], sampling=SamplingParams(max_tokens=3, temperature=0))
    text_only = ChatRequest(messages=[{"role": "user", "content": "What colours pass?"}], sampling=SamplingParams(max_tokens=3, temperature=0))
    engine = create_engine("pt", str(tmp_path / "out"))
    try:
        [[answer]], [[plain]] = engine.generate([request]), engine.generate([text_only])
    finally:
        engine.close()
    # the video: <|vision_start|>, its t x h x w / 4 video tokens and <|vision_end|>
    # (Qwen3-VL: each patch's time, at 2 frames a second, and its own <|vision_start|> and <|vision_end|>)
    timed = 4 + sum(len(text_tokens(f"<{t} seconds>", checkpoints[case])) for t in ("0.2", "1.2")) if case == "qwen3_vl" else 0
    t, h, w = GRID[case]
    assert answer.prompt_tokens == plain.prompt_tokens + 2 + t * h * w // 4 + timed
    assert answer.completion_tokens >= 1


def text_tokens(text: str, checkpoint) -> list[int]:
    return load_processor(checkpoint).tokenizer.encode(text, add_special_tokens=False)
