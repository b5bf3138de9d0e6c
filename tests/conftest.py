"""The fixtures (smollm2_dir, smollm2_tokenizer, tiny_llama_dir) come from tuneforge.testing.pytest_plugin."""

import os

# The project's own tests never autoload whatever plugins happen to be installed;
# tests that need a plugin register it on a fresh manager or set the variable themselves.
os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""


def pytest_collection_modifyitems(config, items):
    """Run the files holding the longest tests first (every test path of the run, plugins' too).

    ``@pytest.mark.slow(minutes=N)`` says about how long a test takes on two cores. Under
    ``pytest -n 2 --dist loadfile --no-loadscope-reorder`` (the README's test command) a
    file's tests go to one worker, in this order: the long files start at once, on
    different workers, instead of ending the run on one while the other waits.
    """

    def minutes(item) -> float:
        marker = item.get_closest_marker("slow")
        return float(marker.kwargs.get("minutes", 1)) if marker else 0.0

    weight: dict = {}
    for item in items:
        weight[item.path] = max(weight.get(item.path, 0.0), minutes(item))
    items.sort(key=lambda item: -weight[item.path])  # stable: a file's tests keep their order
