"""`tuneforge deploy` serving images, called with the official openai client: the forms of an
image_url part it takes (data: base64; a file path only under --allowed-image-dir; no http(s)),
and its limits (--max-image-bytes, --max-image-pixels, --max-images), each refused with a 4xx and
a sentence before the image is decoded. The model is the test-only tiny Idefics3
(tuneforge.testing.vlm), installed in the server's process through a dist-info folder."""

import base64
import io
import os
import random
import sys
import time

import openai
import pytest

from tuneforge.testing.server import Server
from tuneforge.testing.vlm import IMAGE_SEQ_LEN, image_data_url, image_file, tiny_vlm_dir

RED, BLUE = (220, 20, 20), (20, 20, 220)
MAX_BYTES, MAX_PIXELS, MAX_IMAGES = 20_000, 500 * 500, 2


@pytest.fixture(scope="module")
def vlm_env(tmp_path_factory):
    """The tiny VLM checkpoint, and the environment that installs its test plugin in a server."""
    folder = tmp_path_factory.mktemp("vlm-serve")
    model = tiny_vlm_dir(folder / "tiny-vlm")
    info = folder / "site" / "tuneforge_tiny_vlm-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tuneforge-tiny-vlm\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tuneforge]\ntiny-vlm = tuneforge.testing.vlm_plugin\n")
    env = {"PYTHONPATH": os.pathsep.join([str(folder / "site"), *sys.path]), "TUNEFORGE_LOAD_PLUGINS": "tiny-vlm"}
    return model, env


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """The directory the limited server may read, a picture in it, and one outside it."""
    root = tmp_path_factory.mktemp("images")
    allowed = root / "allowed"
    (allowed / "sub").mkdir(parents=True)
    image_file(allowed / "sub" / "red.png", RED)
    image_file(root / "secret.png", BLUE)
    os.symlink(root / "secret.png", allowed / "link.png")  # a path inside that leads outside
    return allowed


@pytest.fixture(scope="module")
def limited(vlm_env, pictures, tmp_path_factory):
    model, env = vlm_env
    args = ["--model", model, "--served-model-name", "vlm", "--allowed-image-dir", pictures,
            "--max-image-bytes", MAX_BYTES, "--max-image-pixels", MAX_PIXELS, "--max-images", MAX_IMAGES]
    server = Server(args, tmp_path_factory.mktemp("log") / "server.log", env=env)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.tail()


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def ask(server, *images: str, **options):
    content = [*map(image, images), {"type": "text", "text": "What is in the picture?"}]
    return server.client().chat.completions.create(
        model="vlm", messages=[{"role": "user", "content": content}], max_tokens=options.pop("max_tokens", 4), temperature=0, **options
    )


def refused(error_type, server, *images: str) -> openai.APIStatusError:
    with pytest.raises(error_type) as caught:
        ask(server, *images)
    return caught.value


def png(size, noise: bool = False) -> bytes:
    from PIL import Image

    picture = Image.new("RGB", size, RED)
    if noise:
        picture = Image.frombytes("RGB", size, random.Random(0).randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def test_a_base64_image_and_the_same_image_by_path_get_the_same_answer(limited, pictures):
    by_data = ask(limited, data_url((pictures / "sub" / "red.png").read_bytes()))
    assert by_data.usage.prompt_tokens > IMAGE_SEQ_LEN + 10  # the image tokens are in the prompt
    for path in ("sub/red.png", str(pictures / "sub" / "red.png"), "file://" + str(pictures / "sub" / "red.png")):
        by_path = ask(limited, path)
        assert by_path.choices[0].message.content == by_data.choices[0].message.content, path
        assert by_path.usage == by_data.usage


def test_a_path_outside_the_allowed_dir_is_refused(limited, pictures):
    for path in (str(pictures.parent / "secret.png"), "../secret.png", "link.png"):
        error = refused(openai.BadRequestError, limited, path)
        assert f"'messages[0].content' part 1 is the file path '{path}', which is outside the directory this server reads images from (--allowed-image-dir)" in error.message
        assert error.code == "image_path_not_allowed"
    error = refused(openai.BadRequestError, limited, "sub/missing.png")
    assert "there is no such file under --allowed-image-dir" in error.message


def test_a_remote_url_is_refused_at_once(limited):
    start = time.monotonic()
    # A non-routable address: a server that tried to fetch it would hang.
    error = refused(openai.BadRequestError, limited, "http://10.255.255.1/cat.png")
    assert time.monotonic() - start < 5
    assert "'messages[0].content' part 1 is the image URL 'http://10.255.255.1/cat.png', and this server fetches nothing; send the image as a data:image/...;base64 URL." in error.message
    assert error.code == "image_url_not_supported"


def test_a_video_part_is_refused_at_once(limited, pictures):
    content = [{"type": "video_url", "video_url": {"url": str(pictures / "sub")}}, {"type": "text", "text": "What happens?"}]
    with pytest.raises(openai.BadRequestError) as caught:
        limited.client().chat.completions.create(model="vlm", messages=[{"role": "user", "content": content}], max_tokens=4)
    assert "'messages[0].content' part 1 is a video_url part, which this server does not take (it serves images only); send the video's frames as image_url parts." in caught.value.message
    assert caught.value.code == "video_url_not_supported"


def test_too_many_images_is_a_400(limited):
    error = refused(openai.BadRequestError, limited, *[image_data_url(RED)] * (MAX_IMAGES + 1))
    assert f"The request has {MAX_IMAGES + 1} images, above this server's limit of {MAX_IMAGES} (--max-images)" in error.message
    assert error.code == "too_many_images"
    assert ask(limited, *[image_data_url(RED)] * MAX_IMAGES).choices[0].message.content is not None


def test_an_image_over_the_byte_limit_is_a_413_before_decoding(limited, pictures):
    noisy = png((120, 120), noise=True)  # random pixels: about 43 KB of PNG
    assert len(noisy) > MAX_BYTES
    error = refused(openai.APIStatusError, limited, data_url(noisy))
    assert error.status_code == 413 and error.code == "image_too_large"
    assert f"above this server's limit of {MAX_BYTES} (--max-image-bytes); send a smaller image." in error.message
    # Not even base64: the size alone refuses it, nothing is decoded.
    error = refused(openai.APIStatusError, limited, "data:image/png;base64," + "!" * 40_000)
    assert error.status_code == 413 and "--max-image-bytes" in error.message
    (pictures / "noisy.png").write_bytes(noisy)
    error = refused(openai.APIStatusError, limited, "noisy.png")
    assert error.status_code == 413 and f"an image file of {len(noisy)} bytes" in error.message


def test_an_image_over_the_pixel_limit_is_a_413_from_its_header(limited):
    large = png((1000, 600))  # one colour: a few KB for 600,000 pixels
    assert len(large) < MAX_BYTES
    error = refused(openai.APIStatusError, limited, data_url(large))
    assert error.status_code == 413 and error.code == "image_too_large"
    assert f"'messages[0].content' part 1 is an image of 1000x600 = 600000 pixels, above this server's limit of {MAX_PIXELS} (--max-image-pixels)" in error.message
    # Only the header is read: an image whose pixel data is cut off is refused for its size all the same.
    error = refused(openai.APIStatusError, limited, data_url(large[:100]))
    assert error.status_code == 413 and "1000x600" in error.message


def test_what_is_not_an_image_is_a_400(limited):
    error = refused(openai.BadRequestError, limited, data_url(b"just some text, not a picture"))
    assert "'messages[0].content' part 1 is not an image this server can read; send a PNG, JPEG or WebP image." in error.message
    error = refused(openai.BadRequestError, limited, "data:image/png;base64,iVBOR%%%")
    assert "holds invalid base64" in error.message
    error = refused(openai.BadRequestError, limited, "data:image/png,rawbytes")
    assert "is a data: URL without ';base64'" in error.message
    # The server answers the next request.
    assert ask(limited, image_data_url(BLUE)).choices[0].finish_reason in ("stop", "length")


def test_a_streamed_answer_with_an_image(limited):
    chunks = list(ask(limited, image_data_url(BLUE), stream=True, max_tokens=4))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ask(limited, image_data_url(BLUE)).choices[0].message.content


def test_by_default_paths_are_refused_and_large_images_fit_the_body(vlm_env, pictures, tmp_path):
    model, env = vlm_env
    server = Server(["--model", model, "--served-model-name", "vlm"], tmp_path / "server.log", env=env)
    try:
        error = refused(openai.BadRequestError, server, str(pictures / "sub" / "red.png"))
        assert "'messages[0].content' part 1 is the file path '" in error.message
        assert (
            "', and this server reads no image files unless started with --allowed-image-dir; "
            "send the image as a data:image/...;base64 URL." in error.message
        )
        shown = error.message.split("the file path '", 1)[1].split("', and", 1)[0]  # a long path is cut short with ...
        assert str(pictures / "sub" / "red.png").startswith(shown.removesuffix("...")) and len(shown) > 20
        # A 3 MB picture is over 4 MiB as base64: the body limit of a server whose model takes images holds it.
        big = png((1100, 1100), noise=True)
        assert len(big) < 4 * 1024 * 1024 < len(data_url(big))
        assert ask(server, data_url(big)).usage.prompt_tokens > IMAGE_SEQ_LEN
    finally:
        assert server.stop() == 0, server.tail()


def test_deploy_refuses_bad_image_options_before_loading(tmp_path):
    from test_server_limits import deploy_fails

    assert f"--allowed-image-dir {tmp_path / 'none'} is not a directory" in deploy_fails(["--model", tmp_path, "--allowed-image-dir", tmp_path / "none"])
    assert "--max-images is 0; it must be at least 1." in deploy_fails(["--model", tmp_path, "--max-images", "0"])
