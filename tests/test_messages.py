"""The one content check (tuneforge.messages): text or OpenAI parts, the same sentence wherever they come from."""

import base64
import sys

import pytest

from tuneforge.data.convert import validate_conversation
from tuneforge.errors import DataError
from tuneforge.inference import ChatRequest
from tuneforge.messages import ContentError, check_content, images_of, load_image, refuse_parts, text_of
from tuneforge.testing.vlm import image_data_url, image_file

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def test_text_parts_alone_are_text():
    assert check_content([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "message 1") == "ab"
    assert check_content("plain", "message 1") == "plain"
    assert check_content(42, "message 1") == "42"


def test_parts_of_every_openai_kind_are_kept():
    parts = [
        {"type": "text", "text": "Look:"},
        IMAGE,
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "file:///clip.mp4"}},
        {"type": "image_url", "image_url": "pictures/cat.png"},  # the short form: a URL string
    ]
    checked = check_content(parts, "message 1")
    assert [p["type"] for p in checked] == ["text", "image_url", "input_audio", "video_url", "image_url"]
    assert checked[4] == {"type": "image_url", "image_url": {"url": "pictures/cat.png"}}
    assert text_of(checked) == "Look:"
    assert images_of([{"role": "user", "content": checked}]) == ["data:image/png;base64,AAAA", "pictures/cat.png"]


@pytest.mark.parametrize(
    "content, message",
    [
        ([{"type": "picture", "url": "x"}], "message 2 (user) part 1 is {'type': 'picture', 'url': 'x'}; a part must be an object whose 'type' is one of text, image_url, input_audio, video_url."),
        ([{"type": "text", "text": "a"}, {"type": "image_url"}], "message 2 (user) part 2 is a image_url part without a 'image_url.url' string; give it as {\"type\": \"image_url\", \"image_url\": {\"url\": ...}}."),
        ([{"type": "input_audio", "input_audio": {"format": "wav"}}], "message 2 (user) part 1 is a input_audio part without a 'input_audio.data' string"),
        ({"text": "a"}, "message 2 (user) has content of type dict; it must be text or a list of parts"),
    ],
)
def test_bad_content_gets_one_sentence_naming_the_message_and_part(content, message):
    with pytest.raises(ContentError) as error:
        check_content(content, "message 2 (user)")
    assert str(error.value).startswith(message)


def test_conversations_keep_image_parts_in_user_messages_only():
    row = {"messages": [{"role": "user", "content": [IMAGE, {"type": "text", "text": "What is it?"}]}, {"role": "assistant", "content": "A cat."}]}
    assert validate_conversation(row)["messages"][0]["content"][0] == IMAGE
    row = {"messages": [{"role": "user", "content": "Draw"}, {"role": "assistant", "content": [IMAGE]}]}
    with pytest.raises(DataError, match=r"^message 2 \(assistant\) has a 'image_url' part; only user messages may carry images, audio or video$"):
        validate_conversation(row)


def test_chat_requests_check_their_content():
    request = ChatRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert request.messages[0]["content"] == "Hi"
    with pytest.raises(ContentError, match=r"^Message 1 part 1 is 'hi'; a part must be an object"):
        ChatRequest(messages=[{"role": "user", "content": ["hi"]}])


def test_a_model_refuses_the_modalities_it_does_not_take():
    messages = [{"role": "user", "content": [IMAGE]}]
    refuse_parts(messages, ("text", "image"), "the model 'vl'")
    with pytest.raises(ContentError, match=r"^Message 1 has a 'image_url' part, but the model 'tiny' takes text only; send text, or use a model whose family handles image"):
        refuse_parts(messages, ("text",), "the model 'tiny'")


def test_images_decode_from_files_and_data_urls(tmp_path):
    path = image_file(tmp_path / "red.png", (200, 0, 0), (8, 6))
    assert load_image(path).size == (8, 6)
    assert load_image("red.png", base_dir=str(tmp_path)).getpixel((0, 0)) == (200, 0, 0)
    assert load_image(image_data_url((0, 0, 200), (5, 5))).getpixel((2, 2)) == (0, 0, 200)


@pytest.mark.parametrize(
    "url, message",
    [
        ("https://example.com/a.png", "The image URL 'https://example.com/a.png' is remote, and tuneforge fetches nothing; send it as a data:image/...;base64 URL."),
        ("data:image/png,rawbytes", "The image URL 'data:image/png,rawbytes' is a data: URL without ';base64'; encode the image as base64."),
        ("data:image/png;base64,***", "The image data: URL 'data:image/png;base64,***' holds invalid base64; encode the image bytes again."),
        ("data:image/png;base64," + base64.b64encode(b"not a png").decode(), "could not be decoded (UnidentifiedImageError); give a PNG, JPEG or WebP image."),
        ("missing/cat.png", "The image file 'missing/cat.png' does not exist; fix the path in the row."),
    ],
)
def test_undecodable_images_get_a_sentence(url, message):
    with pytest.raises(ContentError) as error:
        load_image(url)
    assert message in str(error.value)


def test_without_pillow_decoding_names_the_package(monkeypatch):
    url = image_data_url()
    monkeypatch.setitem(sys.modules, "PIL", None)  # what a missing package looks like to import
    with pytest.raises(ContentError, match=r"^Decoding an image part needs the 'pillow' package; install it with pip install pillow\.$"):
        load_image(url)


def test_a_part_whose_type_is_not_text_gets_the_same_sentence():
    with pytest.raises(ContentError, match=r"^message 1 part 1 is \{'type': \[\], 'text': 'Hi'\}; a part must be an object whose 'type' is one of"):
        check_content([{"type": [], "text": "Hi"}], "message 1")
