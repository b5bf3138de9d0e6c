"""The whiteboard-notes dataset: drawn once into tuneforge's home, the same bytes every time,
every picture readable, its reference notes full marks on the meeting-minutes checker, and
`tuneforge eval` scoring a real (tiny, random) vision-language model on it."""

import json
import os
from pathlib import Path

import pytest
from PIL import Image, ImageOps

import tuneforge.testing.vlm_plugin as vlm_plugin
from tuneforge.api import DataError, check_minutes, load_image
from tuneforge.testing import registry, run_cli
from tuneforge.testing.vlm import tiny_vlm_dir
from tuneforge_vl.datasets import whiteboard_notes
from tuneforge_vl.datasets.whiteboard_notes import SPLITS, evaluate, load, split_path
from tuneforge_vl.datasets.whiteboard_notes.generate import SPLIT_SIZES, make_board, write
from tuneforge_vl.datasets.whiteboard_notes.render import CLEAR, HARD, HEIGHT, WIDTH, render


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """A tuneforge home with every split drawn the way a user's first run draws it; notes what was there when."""
    home = tmp_path_factory.mktemp("home")
    before = os.environ.get("TUNEFORGE_HOME")
    os.environ["TUNEFORGE_HOME"] = str(home)
    seen = {}
    try:
        split_path("test")
        seen["after test"] = sorted(p.name for p in whiteboard_notes.cache_dir().iterdir())
        for split in ("hard", "train"):
            split_path(split)
        seen["mtime"] = split_path("test").stat().st_mtime_ns
    finally:
        if before is None:
            del os.environ["TUNEFORGE_HOME"]
        else:
            os.environ["TUNEFORGE_HOME"] = before
    return home, seen


@pytest.fixture
def home(drawn, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(drawn[0]))
    return drawn[0]


def test_the_plugin_registers_the_dataset_with_its_splits(manager, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    source = registry(manager).get("datasets", "whiteboard-notes")
    assert source.splits == ("train", "test", "hard") and source.evaluate is not None
    with pytest.raises(DataError, match=r"^The dataset 'whiteboard-notes' has no split 'valid'; use one of: train, test, hard"):
        source.resolve("valid")
    assert not (tmp_path / "datasets").exists()  # refused before drawing anything


def test_a_split_is_drawn_on_first_use_alone_and_kept(drawn, home):
    _, seen = drawn
    assert seen["after test"] == ["test", "test.jsonl"]  # only the split asked for
    assert split_path("test").stat().st_mtime_ns == seen["mtime"]  # later uses find it drawn
    assert whiteboard_notes.cache_dir() == home / "datasets" / f"whiteboard-notes-v{whiteboard_notes.VERSION}"
    assert not [p for p in whiteboard_notes.cache_dir().iterdir() if p.name.startswith(".")]  # no staging left behind


def test_each_split_holds_its_boards_and_every_picture_decodes(home):
    counts = {}
    for split in SPLITS:
        rows = load(split)
        counts[split] = len(rows)
        for index, row in enumerate(rows):
            user, assistant = row["messages"]
            image, instruction = user["content"]
            assert image["type"] == "image_url" and instruction == {"type": "text", "text": "Write the meeting notes from this whiteboard."}
            picture = load_image(image["image_url"]["url"])
            assert picture.size == (WIDTH, HEIGHT)
            assert row["meta"]["id"] == f"{split}-{index:04d}" and row["meta"]["split"] == split
            assert row["meta"]["style"] == ("hard" if split == "hard" else "clear")
            assert assistant == {"role": "assistant", "content": make_board(f"whiteboard-notes/{split}/{index}").notes()}
    assert counts == {"train": 320, "test": 60, "hard": 60} == SPLIT_SIZES
    assert sum(counts.values()) >= 300


def test_the_held_out_boards_are_not_training_boards(home):
    train = {row["messages"][1]["content"] for row in load("train")}
    for split in ("test", "hard"):
        assert not train & {row["messages"][1]["content"] for row in load(split)}


def test_drawing_writes_the_same_bytes_every_time(home, tmp_path):
    sizes = {"train": 3, "hard": 3}
    first, second = write(tmp_path / "a", sizes), write(tmp_path / "b", sizes)
    for split in sizes:
        assert first[split].read_text().replace(str((tmp_path / "a").resolve()), "DIR") == \
            second[split].read_text().replace(str((tmp_path / "b").resolve()), "DIR")
        for index in range(3):
            name = f"{split}/{index:04d}.png"
            png = (tmp_path / "a" / name).read_bytes()
            assert png == (tmp_path / "b" / name).read_bytes()
            assert png == (whiteboard_notes.cache_dir() / name).read_bytes()  # a prefix of the full split
    hard = Image.open(tmp_path / "a" / "hard" / "0000.png")
    clear = Image.open(tmp_path / "a" / "train" / "0000.png")
    assert len(hard.getcolors(1 << 24)) > 2 * len(clear.getcolors(1 << 24))  # noise, glare, blur


def test_the_reference_notes_score_full_marks(home):
    for split in SPLITS:
        rows = load(split)
        answers = [row["messages"][1]["content"] for row in rows]
        assert all(check_minutes(answer, row["meta"]) == [] for answer, row in zip(answers, rows))
        scores = evaluate(rows, answers)
        assert scores["follows_structure"] == scores["total"] == len(rows)
        assert scores["action_items_matched"] == scores["action_items_expected"] >= 2 * len(rows)
        assert scores["date_correct"] == scores["attendees_correct"] == scores["decision_overlap"] == 1.0
        assert scores["report"][0] == f"[{split}] notes that follow the structure: {len(rows)}/{len(rows)} (100%)"
        assert all(row["problems"] == [] for row in scores["per_row"])


def test_a_wrong_owner_or_due_date_is_caught(home):
    row = load("test")[0]
    notes = row["messages"][1]["content"]
    first = row["meta"]["action_items"][0]
    other = next(name["name"] for name in row["meta"]["speakers"] if name["name"] != first["owner"])
    stranger = f"- Zed | {first['task']} | due {first['due']}"
    line = f"- {first['owner']} | {first['task']} | due {first['due']}"
    assert line in notes
    wrong_owner = notes.replace(line, f"- {other} | {first['task']} | due {first['due']}")
    wrong_due = notes.replace(line, f"- {first['owner']} | {first['task']} | due 2026-12-31")
    scores = evaluate([row] * 4, [notes, wrong_owner, wrong_due, notes.replace(line, stranger)])
    expected = len(row["meta"]["action_items"])
    assert [r["action_items_matched"] for r in scores["per_row"]] == [expected, expected - 1, expected - 1, expected - 1]
    assert [r["follows_structure"] for r in scores["per_row"]] == [True, True, True, False]
    assert scores["per_row"][3]["problems"] == ["action item 1 owner 'Zed' is not a speaker in the meeting"]


def test_rows_of_several_splits_are_reported_split_by_split(home):
    test, hard = load("test")[:3], load("hard")[:2]
    answers = [row["messages"][1]["content"] for row in test] + ["no notes"] * 2
    scores = evaluate(test + hard, answers)
    assert scores["per_split"]["test"]["follows_structure"] == 3 and scores["per_split"]["hard"]["follows_structure"] == 0
    assert "[hard] notes that follow the structure: 0/2 (0%)" in scores["report"]
    assert scores["report"][0] == "[all] notes that follow the structure: 3/5 (60%)"


def percentile(grey: Image.Image, share: float) -> int:
    counts, seen = grey.histogram(), 0
    for value, count in enumerate(counts):
        seen += count
        if seen >= share * sum(counts):
            return value
    return 255


@pytest.mark.parametrize("style, contrast", [(CLEAR, 100), (HARD, 35)])
def test_the_text_is_inked_where_the_board_says_it_was_written(style, contrast):
    board = make_board("whiteboard-notes/train/7")
    picture, drawn = render(board, style, "a sample")
    assert picture.size == (WIDTH, HEIGHT) and picture.mode == "RGB"
    texts = [item.text for item in drawn]
    wanted = [board.title, board.date, "Present: " + " ".join(board.attendees), *(f"* {d}" for d in board.decisions)]
    wanted += [piece for owner, task, due in board.actions for piece in (owner, f"due {due}")]
    assert all(text in texts for text in wanted)
    grey = ImageOps.grayscale(picture)
    for item in drawn:
        crop = grey.crop(item.box)
        darkest, _ = crop.getextrema()
        paper = percentile(crop, 0.75)  # most of a text's box is the board around the strokes
        assert paper - darkest >= contrast, item
    # and the board is not inked all over: most of it is the board's off-white (or the wall around it)
    assert sum(grey.histogram()[:120]) < 0.2 * WIDTH * HEIGHT


def test_tuneforge_eval_answers_the_pictures_and_scores_them(manager, smollm2_dir, tmp_path, home):
    manager.register_plugin(vlm_plugin, "tiny-vlm", "tuneforge-tiny-vlm", "test")  # a model that takes pictures
    model = tiny_vlm_dir(tmp_path / "tiny-vlm", tokenizer_dir=smollm2_dir)
    answers = tmp_path / "answers.jsonl"
    result = run_cli("eval", "--model", model, "--dataset", "whiteboard-notes", "--split", "hard", "--limit", "2",
                     "--max-new-tokens", "4", "--output", answers)
    assert "[hard] notes that follow the structure: 0/2 (0%)" in result.output
    assert "[hard] action items with the right owner and due date: 0/" in result.output
    written = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [row["meta"]["id"] for row in written] == ["hard-0000", "hard-0001"]
    assert written[0]["scores"]["follows_structure"] is False and "missing sections" in " ".join(written[0]["scores"]["problems"])
    summary = json.loads(Path(str(answers).replace(".jsonl", ".summary.json")).read_text())
    assert summary["scores"]["total"] == 2 and summary["dataset"] == "whiteboard-notes"
