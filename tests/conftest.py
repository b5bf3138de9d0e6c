"""The fixtures (smollm2_dir, smollm2_tokenizer, tiny_llama_dir) come from tuneforge.testing.pytest_plugin."""

import os
import sys

# The project's own tests never autoload whatever plugins happen to be installed;
# tests that need a plugin register it on a fresh manager or set the variable themselves.
os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""


# Under pytest-xdist each worker computes with its share of the cores: two workers on two
# cores, each with torch's default of two threads, would run four threads on two cores and
# slow both (a test's subprocesses inherit the setting). An explicit OMP_NUM_THREADS stands.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(_workers, 1)))
    if "torch" in sys.modules:  # already imported: the variable came too late for it
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """Run the files holding the longest tests first (every test path of the run, plugins' too).

    ``@pytest.mark.slow(minutes=N)`` says about how long a test takes on two cores. Under
    ``pytest -n auto --dist loadfile --no-loadscope-reorder`` (the README's test command) a
    file's tests go to one worker, in this order: the long files start first, each on a
    worker computing on its own share of the cores, and the many short files fill in
    around them, instead of a long file starting last and ending the run alone.
    """

    def minutes(item) -> float:
        marker = item.get_closest_marker("slow")
        return float(marker.kwargs.get("minutes", 0.5)) if marker else 0.0

    weight: dict = {}
    for item in items:
        weight[item.path] = weight.get(item.path, 0.0) + minutes(item)
    items.sort(key=lambda item: -weight[item.path])  # stable: a file's tests keep their order
