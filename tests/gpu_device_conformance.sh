#!/usr/bin/env bash
# The device conformance kit on the cuda device, on a GPU machine without network access.
#
#   bash tests/gpu_device_conformance.sh prepare   # here, where SmolLM2's tokenizer can be fetched
#   bash tests/gpu_device_conformance.sh run       # there, in the checkout with .gpu-conformance/ beside it
#
# `prepare` writes .gpu-conformance/ (about 17 MB, ignored by git: carry it along): the
# tiny random-weight model the kit trains (with SmolLM2's tokenizer, which the GPU
# machine cannot fetch) and the wheels of tuneforge's requirements a GPU image may lack.
# `run` puts those wheels and the checkout's own sources on PYTHONPATH (no install, so
# nothing of the image changes and no installed tuneforge is used) and runs the cuda
# class of tests/test_device_conformance.py. On one GPU the 2-process all-reduce check
# is skipped (nccl wants a GPU per process); on a machine with two it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=.gpu-conformance
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
SITE=/tmp/gpu-conformance-site

case "${1:-}" in
prepare)
    mkdir -p "$HERE"
    "$PYTHON" -c "from tuneforge.testing import smollm2_dir, tiny_model_dir; print(tiny_model_dir('$HERE/tiny-llama', tokenizer_dir=smollm2_dir()))"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: -d "$HERE/wheels" gguf==0.19.0 fastapi==0.165.0 uvicorn==0.54.0 num2words==0.5.14
    du -sh "$HERE"
    ;;
run)
    "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "$HERE"/wheels/*.whl
    # -p no:tuneforge: an installed tuneforge's pytest plugin gives way to the checkout's.
    PYTHONPATH="$PWD/core:$SITE${PYTHONPATH:+:$PYTHONPATH}" TUNEFORGE_CONFORMANCE_MODEL="$PWD/$HERE/tiny-llama" \
        "$PYTHON" -m pytest -p no:tuneforge -p tuneforge.testing.pytest_plugin -q -rs --durations=0 \
        tests/test_device_conformance.py -k TestCUDAConformance
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
