"""The pt engine batches requests with images together, and with text-only ones: each answer is the
one the request gets alone (greedy), on the test-only tiny Idefics3 (tuneforge.testing.vlm)."""

import pytest

import tuneforge.testing.vlm_plugin as vlm_plugin
from tuneforge.inference import ChatRequest, SamplingParams, create_engine
from tuneforge.testing import plugin_installed
from tuneforge.testing.vlm import image_data_url, image_file, tiny_vlm_dir

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    model = tiny_vlm_dir(tmp_path_factory.mktemp("vlm") / "tiny-vlm")
    with plugin_installed(vlm_plugin, "tiny-vlm", "tuneforge-tiny-vlm"):
        engine = create_engine("pt", model, device="cpu", batch_size=8)
        try:
            yield engine
        finally:
            engine.close()


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def ask(*parts, max_tokens: int = 6) -> ChatRequest:
    content = [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]
    return ChatRequest(messages=[{"role": "user", "content": content}], sampling=SamplingParams(max_tokens=max_tokens, temperature=0))


def requests(folder) -> list[ChatRequest]:
    """Images of several sizes and counts, as data: URLs and as a file, beside text-only requests."""
    blue = image_file(folder / "blue.png", BLUE, size=(64, 20))
    return [
        ask(image(image_data_url(RED)), "What colour is it?"),
        ask("Say something about colours."),
        ask(image(image_data_url(GREEN, size=(16, 48))), image(blue), "Compare the two pictures."),
        ask(image(blue), "And this one?", max_tokens=3),
        ask("A question without a picture, a little longer than the other one."),
        ask(image(image_data_url(RED, size=(300, 200))), image(image_data_url(GREEN)), image(image_data_url(BLUE)), "Three pictures."),
    ]


def test_image_requests_share_a_batch_and_answer_as_alone(engine, tmp_path):
    batch = requests(tmp_path)
    alone = [engine.generate([request])[0] for request in batch]
    runs = engine.scheduler.batches_run
    together = engine.generate(batch)
    # One generate() call for all six: the image rows and the text-only rows shared it.
    assert engine.scheduler.batches_run == runs + 1 and engine.scheduler.largest_batch == len(batch)
    for request, one, shared in zip(batch, alone, together):
        assert shared[0].token_ids == one[0].token_ids, (request.messages, one[0].text, shared[0].text)
        assert shared[0].prompt_tokens == one[0].prompt_tokens
    # The pictures reach the model: the same question about another picture is another prompt.
    assert len({tuple(answer.token_ids) for [answer] in together}) > 1


def test_concurrent_image_requests_answer_as_alone(engine, tmp_path):
    import threading

    batch = requests(tmp_path)
    alone = [engine.generate([request])[0][0].token_ids for request in batch]
    answers: dict[int, list[int]] = {}
    start = threading.Barrier(len(batch))

    def one(i: int) -> None:
        start.wait()
        answers[i] = engine.generate([batch[i]])[0][0].token_ids

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batch))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answers[i] for i in range(len(batch))] == alone


def test_a_stream_with_an_image_matches_generate(engine):
    request = ask(image(image_data_url(GREEN)), "Describe it.", max_tokens=5)
    [[whole]] = engine.generate([request])
    stream = engine.stream(request)
    deltas = []
    try:
        while True:
            deltas.append(next(stream))
    except StopIteration as end:
        completion = end.value
    assert "".join(deltas) == whole.text and completion.token_ids == whole.token_ids
