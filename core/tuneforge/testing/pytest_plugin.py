"""Pytest fixtures for tuneforge and its plugins (loaded through the ``pytest11`` entry point).

- ``one_torch_thread``: one intra-op torch thread while a module's tests run.
- ``smollm2_dir``: the real SmolLM2-135M-Instruct checkpoint (converted once, cached).
- ``smollm2_tokenizer``: its tokenizer (ChatML template).
- ``tiny_llama_dir``: a random-weight two-layer Llama with SmolLM2's tokenizer.
- ``varied_tiny_dir``: the same with a larger initialisation, so its greedy answers
  depend on the prompt (the default one answers much the same to everything).
- ``tool_calling_tiny_dir``: ``tiny_llama_dir`` taught to answer "What is the weather
  in Vienna?" (with ``testing.WEATHER_TOOLS``) with a ``get_weather`` call in the
  ``chatml`` template's Hermes layout.
- ``one_process``: ``one_process(command, *args)`` runs ``tuneforge COMMAND ARGS...
  --output-dir DIR`` in this process once per test module and arguments, and returns
  DIR: the 1-process run that several multi-process runs of a module are compared with.
"""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    on shared cores one thread is many times faster than two under contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2_dir():
    from tuneforge.testing import smollm2_dir as resolve

    return resolve()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, trust_remote_code=False)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_dir):
    from tuneforge.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer_dir=smollm2_dir)


@pytest.fixture(scope="session")
def varied_tiny_dir(tmp_path_factory, smollm2_dir):
    from tuneforge.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny-varied"), tokenizer_dir=smollm2_dir, initializer_range=0.2)


def _built_once_per_run(tmp_path_factory, name: str, build):
    """``build(path)`` run by one test process: under pytest-xdist its workers share the result.

    The workers of one run share the parent of their temporary roots; the first to get
    the lock builds, the others wait for it and reuse the directory.
    """
    import os

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    with FileLock(str(shared) + ".lock"):
        if not (shared / ".complete").exists():
            result = build(shared)
            (shared / ".complete").write_text(str(result))
        return (shared / ".complete").read_text()


@pytest.fixture(scope="session")
def tool_calling_tiny_dir(tmp_path_factory, tiny_llama_dir):
    import torch

    from tuneforge.testing import tool_calling_model_dir

    def build(path):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a small model on shared cores: one thread is faster
        try:
            return tool_calling_model_dir(path, base_dir=tiny_llama_dir, template="chatml")
        finally:
            torch.set_num_threads(threads)

    # Several test files use it: under pytest-xdist one worker teaches it, the others reuse it.
    return _built_once_per_run(tmp_path_factory, "tiny-tools", build)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """``one_process(command, *args)``: the output dir of ``tuneforge COMMAND ARGS...``, run once per module.

    The first call with these arguments runs the command in this process (``run_cli``)
    with an ``--output-dir`` of its own; later calls return that dir. The reference run of
    a module's multi-process tests (``two_processes``, ``step_losses``)::

        alone = one_process("sft", *args, "--per-device-batch-size", 2)
        assert step_losses(two_process_out) == pytest.approx(step_losses(alone), rel=1e-4)
    """
    from tuneforge.testing import run_cli

    made = {}

    def run(command: str, *args):
        key = (command, *map(str, args))
        if key not in made:
            out = tmp_path_factory.mktemp("one-process") / "out"
            run_cli(command, *args, "--output-dir", out)
            made[key] = out
        return made[key]

    return run
