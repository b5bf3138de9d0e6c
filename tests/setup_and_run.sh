#!/usr/bin/env bash
# Set up every test environment and run every test: the README's test command (CI runs it
# through .ci/run). From the repository root: `bash tests/setup_and_run.sh`.
#
# Five virtual environments, because some plugins' dependencies pin versions the others
# cannot share, or must be compiled (each is made anew if missing, and reused if present):
#
#   .venv       the core, the plugins that fit beside it, DeepSpeed (built against the CPU
#               torch: it is published only as a source archive) and `.ms-swift` (a
#               `pip install --target` folder of ms-swift and its pins, for the
#               `bench train --compare ms-swift` test): the main suite, on up to 4 processes
#   .venv-vllm  vLLM's CPU build, which pins its own torch and transformers: plugins/vllm/tests
#   .venv-awq   llmcompressor, which pins transformers and datasets: plugins/awq/tests
#   .venv-min   the oldest versions pyproject.toml allows (.ci/min-versions.txt): the files
#               that check them
#   .venv-llamacpp  llama-cpp-python on llama.cpp compiled for this CPU (tests/llamacpp_env.sh:
#               libllama alone, about 5 CPU minutes): the main suite's
#               tests/test_export_gguf_llamacpp.py runs its python on the exported GGUF files
#
# The four side environments install in the background while the main one installs (their
# output goes to .test-logs/ and is printed, all of it if an install failed); every install
# has finished before the first test runs, since an editable install writes metadata into
# the source tree that the tests read. Then each environment's tests run, one after another.
# The first step that fails stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH=torch==2.13.0  # the CPU build on this disk (README): installed first, so pip keeps it
LOGS=.test-logs
mkdir -p "$LOGS"
pids=()
trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done' EXIT

vllm_env() {
    python3 -m venv .venv-vllm
    .venv-vllm/bin/pip install "$TORCH"
    .venv-vllm/bin/pip install -e ".[test]" -e "plugins/vllm[cpu,test]" -e plugins/qwen -e plugins/vl -e plugins/dpo  # dpo (trl): test_vllm_grpo.py
    .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
}

awq_env() {
    python3 -m venv .venv-awq
    .venv-awq/bin/pip install "$TORCH"
    .venv-awq/bin/pip install -e . -e "plugins/awq[test]"
}

min_env() {
    python3 -m venv .venv-min
    .venv-min/bin/pip install "$TORCH"
    .venv-min/bin/pip install -c .ci/min-versions.txt -e ".[test]"
}

llamacpp_env() {
    bash tests/llamacpp_env.sh
}

start() {  # start NAME FUNCTION: run FUNCTION in the background, its output in $LOGS/NAME.log
    ( set -euo pipefail; "$2" ) > "$LOGS/$1.log" 2>&1 &
    pids+=($!)
    eval "pid_$1=$!"
}

finish() {  # finish NAME WHAT: wait for NAME; stop with its whole log if it failed
    local pid_name="pid_$1"
    if wait "${!pid_name}"; then
        echo "== $2: done ($LOGS/$1.log)"
        tail -n 2 "$LOGS/$1.log"
    else
        echo "== $2 failed ($LOGS/$1.log):"
        cat "$LOGS/$1.log"
        exit 1
    fi
}

start vllm vllm_env
start awq awq_env
start min min_env
start llamacpp llamacpp_env

python3 -m venv .venv
.venv/bin/pip install "$TORCH" setuptools
DS_BUILD_OPS=0 .venv/bin/pip install --no-build-isolation "deepspeed>=0.19"
.venv/bin/pip install -e ".[test,structured]" -e contrib/mistral -e contrib/acme-accelerator -e plugins/qwen -e plugins/internlm \
    -e plugins/dpo -e plugins/vl -e plugins/deepspeed -e plugins/lmdeploy -e plugins/ascend
.venv/bin/pip install --no-deps --upgrade --target .ms-swift -r core/tuneforge/bench/ms-swift-requirements.txt
finish vllm "installing .venv-vllm"
finish awq "installing .venv-awq"
finish min "installing .venv-min"
finish llamacpp "building .venv-llamacpp"

echo "+ .venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder"
.venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder --durations=30
echo "+ .venv-vllm/bin/python -m pytest -q plugins/vllm/tests"
.venv-vllm/bin/python -m pytest -q --durations=15 plugins/vllm/tests
echo "+ .venv-awq/bin/python -m pytest -q plugins/awq/tests"
.venv-awq/bin/python -m pytest -q --durations=10 plugins/awq/tests
echo "+ .venv-min/bin/python -m pytest (the floors of the core's dependencies)"
.venv-min/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder \
    tests/test_versions.py tests/test_adapter_loading.py tests/test_server.py tests/test_inference.py \
    tests/test_training.py::test_lora_run_writes_a_self_describing_output_dir tests/test_training_safety.py
