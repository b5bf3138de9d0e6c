"""Dataset rows with pictures: both layouts (OpenAI ``image_url`` parts; ``<image>`` placeholders with an
``images`` list), every kind of reference (relative and absolute paths, file://, data:, http(s) from a real
local server), the errors a broken picture gets (file, line, fix, before any weights load), the loss mask
of rows with images in several turns, and what --packing does with multimodal samples. The model is the
core's test-only tiny Idefics3 (tuneforge.testing.vlm)."""

import base64
import functools
import http.server
import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import tuneforge.testing.vlm_plugin as vlm_plugin
from tuneforge.cli import cli
from tuneforge.config import TrainConfig
from tuneforge.data import BadRows, convert_rows, prepare_datasets, read_rows
from tuneforge.data.collate import make_collator
from tuneforge.errors import DataError
from tuneforge.templates import IGNORE_INDEX
from tuneforge.testing import plugin_installed
from tuneforge.testing.vlm import IMAGE_SEQ_LEN, image_data_url, image_file, tiny_vlm_dir

RED, BLUE = (220, 20, 20), (20, 20, 220)
QUESTION = "What colour is the picture?"


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return tiny_vlm_dir(tmp_path_factory.mktemp("vlm") / "tiny-vlm")


@pytest.fixture(scope="module")
def template(vlm_dir):
    from transformers import AutoProcessor

    return vlm_plugin.ImageChatTemplate(AutoProcessor.from_pretrained(vlm_dir))


@pytest.fixture
def vlm():
    with plugin_installed(vlm_plugin, "tiny-vlm", "tuneforge-tiny-vlm") as manager:
        yield manager


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from a directory that is not the dataset's: relative paths must not depend on it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def web(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def convert(path: Path, skip: bool = False):
    bad = BadRows(skip=skip)
    return convert_rows(read_rows(str(path)), bad=bad), bad


def image_urls(messages):
    return [p["image_url"]["url"] for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image_url"]


def sharegpt_row(*turns, images=None, videos=None, key="conversations"):
    speakers = ("human", "gpt") if key == "conversations" else ("user", "assistant")
    field = ("from", "value") if key == "conversations" else ("role", "content")
    row = {key: [{field[0]: speakers[n % 2], field[1]: text} for n, text in enumerate(turns)]}
    if images is not None:
        row["images"] = images
    if videos is not None:
        row["videos"] = videos
    return row


# -- the two layouts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["conversations", "messages"])
def test_image_placeholders_become_image_parts_in_place(tmp_path, elsewhere, key):
    data = tmp_path / "set"
    (data / "pics").mkdir(parents=True)
    image_file(data / "pics" / "red.png", RED)
    image_file(data / "pics" / "blue.png", BLUE)
    path = write_jsonl(data / "rows.jsonl", [
        sharegpt_row("<image>\nWhat is it?", "Red.", "And this <image> one?", "Blue.", images=["pics/red.png", "pics/blue.png"], key=key),
    ])
    [row], _ = convert(path)
    first, _, second, _ = row.messages
    red, blue = str(data / "pics" / "red.png"), str(data / "pics" / "blue.png")
    assert first["content"] == [{"type": "image_url", "image_url": {"url": red}}, {"type": "text", "text": "\nWhat is it?"}]
    assert second["content"] == [
        {"type": "text", "text": "And this "}, {"type": "image_url", "image_url": {"url": blue}}, {"type": "text", "text": " one?"},
    ]
    assert row.format == ("sharegpt" if key == "conversations" else "messages")


def test_a_text_row_may_mention_image_without_an_images_list(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [sharegpt_row("What does <image> mean in HTML?", "Nothing.")])
    [row], _ = convert(path)
    assert row.messages[0]["content"] == "What does <image> mean in HTML?"


def test_every_kind_of_reference_resolves_to_a_checked_file(tmp_path, elsewhere, home, web):
    www, base = web
    data = tmp_path / "set"
    image_file(www / "remote.png", BLUE)
    (data / "my pics").mkdir(parents=True)
    image_file(data / "my pics" / "red.png", RED)
    absolute = image_file(tmp_path / "absolute.png", RED)
    inline = image_data_url(RED)
    references = {
        "relative": "my pics/red.png",
        "absolute": absolute,
        "file": "file://" + str(data / "my%20pics" / "red.png"),
        "data": inline,
        "http": f"{base}/remote.png",
    }
    rows = [
        {"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": "Red."},
        ]}
        for url in references.values()
    ]
    converted, _ = convert(write_jsonl(data / "rows.jsonl", rows))
    urls = dict(zip(references, (image_urls(row.messages)[0] for row in converted)))
    assert urls["relative"] == urls["file"] == str(data / "my pics" / "red.png")
    assert urls["absolute"] == absolute and urls["data"] == inline
    fetched = Path(urls["http"])
    assert fetched.parent == home / "media" and fetched.suffix == ".png"
    assert fetched.read_bytes() == (www / "remote.png").read_bytes()

    # fetched once: with the file gone from the server, the copy still serves
    (www / "remote.png").unlink()
    again, _ = convert(write_jsonl(data / "again.jsonl", rows[-1:]))
    assert image_urls(again[0].messages) == [str(fetched)]


def test_images_of_a_parquet_image_column_become_data_urls(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    raw = base64.b64decode(image_data_url(RED).split(",", 1)[1])
    table = pa.table({
        "messages": [json.dumps([{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "Red."}])],
        "images": [[{"bytes": raw, "path": None}]],
    })
    pq.write_table(table, tmp_path / "rows.parquet")
    [row], _ = convert(tmp_path / "rows.parquet")
    [url] = image_urls(row.messages)
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == raw


# -- errors: the file, the line, the fix --------------------------------------------------------------------------------


def broken_rows(tmp_path: Path, base: str) -> list[tuple[dict, str]]:
    image_file(tmp_path / "red.png", RED)
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "folder.png").mkdir()
    ok = "Red."
    return [
        (sharegpt_row("<image><image> What?", ok, images=["red.png"]),
         "the row has 2 <image> placeholders in its text but 1 entry in 'images'; put one <image> in the text where "
         "each picture goes, with one 'images' entry per <image>."),
        (sharegpt_row("What?", ok, images=["red.png"]),
         "the row has 0 <image> placeholders in its text but 1 entry in 'images'"),
        (sharegpt_row("<image> What?", ok, images=["gone.png"]),
         f"the image file '{tmp_path / 'gone.png'}' (the row's 'gone.png', read from the dataset file's folder {tmp_path}) "
         f"does not exist; fix the path in the row, or copy the file there."),
        (sharegpt_row("<image> What?", ok, images=["notes.png"]),
         f"the image file '{tmp_path / 'notes.png'}' (the row's 'notes.png', read from the dataset file's folder {tmp_path}) "
         f"is not an image Pillow can read; give a PNG, JPEG, WebP or GIF image."),
        (sharegpt_row("<image> What?", ok, images=["folder.png"]),
         "is not a file (a directory?); give the path of the file itself."),
        (sharegpt_row("<image> What?", ok, images=["data:image/png;base64,@@@"]),
         "the image data: URL 'data:image/png;base64,@@@' holds invalid base64; encode the image bytes again."),
        (sharegpt_row("<image> What?", ok, images=[f"{base}/missing.png"]),
         f"the image URL '{base}/missing.png' could not be fetched (HTTP 404 File not found); download it and give its "
         f"local path in the row (a relative path is read from the dataset file's folder)."),
        (sharegpt_row("<image> What?", ok, images=["http://127.0.0.1:9/red.png"]),
         "the image URL 'http://127.0.0.1:9/red.png' could not be fetched (Connection refused); download it"),
        (sharegpt_row("<image> What?", ok, images=["s3://bucket/red.png"]),
         "the image 's3://bucket/red.png' uses the scheme 's3', which tuneforge does not read; give a file path"),
        (sharegpt_row("<image> What?", ok, images=[7]),
         "'images' entry 1 is 7; give a file path, a file://, data: or http(s) URL (or an object with 'path' or 'bytes')."),
        (sharegpt_row("What?", "<image> Red.", images=["red.png"]),
         "message 2 (assistant) has a 'image_url' part; only user messages may carry images, audio or video."),
    ]


def test_each_broken_picture_is_one_sentence_with_the_file_and_line(tmp_path, home, web):
    cases = broken_rows(tmp_path, web[1])
    path = write_jsonl(tmp_path / "rows.jsonl", [row for row, _ in cases])
    converted, bad = convert(path, skip=True)
    assert not converted and bad.count == len(cases)
    for line, (row, expected) in enumerate(cases, start=1):
        with pytest.raises(DataError) as error:
            convert(write_jsonl(tmp_path / "one.jsonl", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."}]}] * (line - 1) + [row]))
        assert str(error.value).startswith(f"{tmp_path / 'one.jsonl'} line {line}: "), str(error.value)
        assert expected in str(error.value), str(error.value)


def sft(*args):
    return CliRunner().invoke(cli, ["sft", *map(str, args)], catch_exceptions=False)


def train_args(model, data, out, *extra):
    return [
        "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", 2, "--learning-rate", 5e-3,
        "--per-device-batch-size", 2, "--logging-steps", 1, "--save-steps", 1000, "--max-length", 96, "--seed", 0, *extra,
    ]


def test_a_missing_picture_stops_the_run_before_the_weights_load(vlm, vlm_dir, tmp_path, elsewhere):
    image_file(tmp_path / "red.png", RED)
    rows = [sharegpt_row("<image> What?", "Red.", images=["red.png"])] * 3 + [sharegpt_row("<image> What?", "Red.", images=["pics/red.png"])]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    started = time.perf_counter()
    result = sft(*train_args(vlm_dir, data, tmp_path / "out"))
    assert result.exit_code != 0
    assert (
        f"rows.jsonl line 4: the image file '{tmp_path / 'pics' / 'red.png'}' (the row's 'pics/red.png', read from the "
        f"dataset file's folder {tmp_path}) does not exist; fix the path in the row, or copy the file there." in result.output
    )
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - started < 60


def test_videos_become_video_parts_that_an_image_only_family_refuses(vlm, vlm_dir, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    row = sharegpt_row("<video> What happens?", "A pan.", videos=["clip.mp4"])
    [converted], _ = convert(write_jsonl(tmp_path / "rows.jsonl", [row]))
    assert converted.messages[0]["content"][0] == {"type": "video_url", "video_url": {"url": str(tmp_path / "clip.mp4")}}

    result = sft(*train_args(vlm_dir, tmp_path / "rows.jsonl", tmp_path / "out"))
    assert result.exit_code != 0
    assert "rows.jsonl line 1: Message 1 has a 'video_url' part, but the model" in result.output
    assert "takes text and image only; send text, or use a model whose family handles video" in result.output
    assert not (tmp_path / "out").exists()


def test_a_video_given_as_frames_is_a_list_or_a_directory_of_checked_images(tmp_path):
    (tmp_path / "clip").mkdir()
    for n, colour in enumerate((RED, BLUE, RED), start=1):
        image_file(tmp_path / "clip" / f"{n:04d}.png", colour, (28, 28))
    rows = [
        sharegpt_row("<video> What happens?", "A flash.", videos=[["clip/0001.png", "clip/0002.png"]]),
        sharegpt_row("<video> What happens?", "A flash.", videos=["clip"]),
        {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": json.dumps(["clip/0003.png"])}}]}, {"role": "assistant", "content": "Red."}]},
    ]
    converted, _ = convert(write_jsonl(tmp_path / "rows.jsonl", rows))
    videos = [c.messages[0]["content"][0]["video_url"]["url"] for c in converted]
    clip = tmp_path / "clip"
    assert videos == [json.dumps([str(clip / "0001.png"), str(clip / "0002.png")]), str(clip), json.dumps([str(clip / "0003.png")])]

    (tmp_path / "empty").mkdir()
    rows = [sharegpt_row("<video>?", "No.", videos=[["clip/0001.png", "clip/0009.png"]]), sharegpt_row("<video>?", "No.", videos=["empty"])]
    _, bad = convert(write_jsonl(tmp_path / "bad.jsonl", rows), skip=True)
    reasons = " ".join(bad.examples)
    assert bad.count == 2
    assert f"the image file '{clip / '0009.png'}'" in reasons and "does not exist" in reasons
    assert f"the video file '{tmp_path / 'empty'}'" in reasons and "is a directory without frame images" in reasons


# -- the loss mask and packing ---------------------------------------------------------------------------------------


def several_turn_rows(folder: Path) -> Path:
    image_file(folder / "red.png", RED)
    image_file(folder / "blue.png", BLUE)
    rows = [
        sharegpt_row("<image>What colour?", "Red.", "And <image> this one?", "Blue.", images=["red.png", "blue.png"]),
        sharegpt_row("<image>What colour?", "Blue.", "Is it the same as <image>?", "No, red.", images=["blue.png", "red.png"]),
    ]
    return write_jsonl(folder / "rows.jsonl", rows)


def test_the_loss_falls_only_on_assistant_text_in_rows_with_images_in_several_turns(template, tmp_path):
    data = several_turn_rows(tmp_path)
    samples, _, summary = prepare_datasets(TrainConfig(dataset=[str(data)], max_length=128, seed=0), template.tokenizer, template)
    tokenizer = template.tokenizer
    image_ids = set(template.image_ids)
    answers = {}
    for sample in samples:
        ids, labels = sample["input_ids"], sample["labels"]
        assert sum(1 for token in ids if token == template.image_id) == 2 * IMAGE_SEQ_LEN
        assert sample["extras"]["pixel_values"].shape[:2] == (1, 2)  # both pictures, in order
        learned = [token for token, label in zip(ids, labels) if label != IGNORE_INDEX]
        assert all(label == token for token, label in zip(ids, labels) if label != IGNORE_INDEX)
        assert not image_ids & set(learned)  # no image token (nor its markers) is learned
        text = tokenizer.decode(learned)
        answers[text] = True
        assert "colour" not in text and "this one" not in text and "same as" not in text  # no prompt token either
    assert set(answers) == {"Red.<|im_end|>Blue.<|im_end|>", "Blue.<|im_end|>No, red.<|im_end|>"}, answers
    assert summary.packing == ""

    # the collator keeps the mask: padding and image tokens stay ignored
    batch = make_collator(tokenizer, packing=True, collate_extras=getattr(template, "collate_extras", None))(samples)
    assert "attention_mask" in batch and "position_ids" not in batch  # padded, not packed
    assert batch["pixel_values"].shape[:2] == (2, 2)
    learned = batch["labels"][batch["labels"] != IGNORE_INDEX]
    assert not image_ids & set(learned.tolist())


def test_packing_packs_text_batches_and_pads_batches_with_pictures(template, tmp_path):
    collate = make_collator(template.tokenizer, packing=True, collate_extras=getattr(template, "collate_extras", None))
    text = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    packed = collate(text)
    assert packed["input_ids"].shape == (1, 5) and packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    data = several_turn_rows(tmp_path)
    samples, _, summary = prepare_datasets(
        TrainConfig(dataset=[str(data)], max_length=128, seed=0, packing=True), template.tokenizer, template
    )
    pictures = collate(samples)
    assert pictures["input_ids"].shape[0] == 2 and "position_ids" not in pictures and pictures["pixel_values"].shape[:2] == (2, 2)
    assert summary.packing.startswith("2 training samples of 2 carry images (or other extras) and are not packed: ")
    assert "packing: 2 training samples of 2 carry images" in summary.describe()


def test_packing_a_vision_model_says_once_what_it_does_not_pack(vlm, vlm_dir, tmp_path):
    data = several_turn_rows(tmp_path)
    result = sft(*train_args(vlm_dir, data, tmp_path / "out", "--train-type", "lora", "--packing"))
    assert result.exit_code == 0, result.output
    statement = "a sample's pixel values, image grid and position ids belong to its own tokens, so a batch holding one is right-padded instead"
    assert result.output.count(statement) == 1
    record = json.loads((tmp_path / "out" / "tuneforge_run.json").read_text())
    assert statement in record["data"]["packing"] and record["config"]["packing"] is True


def test_the_varlen_attention_leaves_a_vision_tower_bidirectional(vlm_dir):
    """A vision-language model loaded with the packed-training attention keeps its vision tower's
    attention bidirectional: same image features as with sdpa."""
    import torch
    from transformers import AutoModelForImageTextToText

    from tuneforge.training import attention

    name = attention.register()
    plain = AutoModelForImageTextToText.from_pretrained(vlm_dir, attn_implementation="sdpa")
    varlen = AutoModelForImageTextToText.from_pretrained(vlm_dir, attn_implementation=name)
    pixels = torch.rand(1, 1, 3, 32, 32)
    with torch.no_grad():
        expected = plain.model.vision_model(pixel_values=pixels[0]).last_hidden_state
        got = varlen.model.vision_model(pixel_values=pixels[0]).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5)
