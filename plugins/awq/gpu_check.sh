#!/usr/bin/env bash
# Time the AWQ export of the Qwen2.5-7B shape (random weights) on one GPU: wall time of each step
# and peak GPU and host memory, printed and written as JSON to $OUT (or /tmp/awq-check).
#
# From the repository root on the GPU machine (torch 2.11+cu130, transformers 5.17, no network):
#   WHEELS=.whl/awq1 bash plugins/awq/gpu_check.sh install   # first half of the wheels (pyarrow), when one carry cannot hold all
#   bash plugins/awq/gpu_check.sh prepare          # wheels, random 7B, one LoRA step (~3-5 min)
#   bash plugins/awq/gpu_check.sh export awq 64    # the timed export, 64 calibration rows
#   bash plugins/awq/gpu_check.sh export gptq 64   # the same with GPTQ
#   AWQ_GROUP_SIZE=32 AWQ_SYMMETRIC=1 bash plugins/awq/gpu_check.sh export gptq 64   # the layout LMDeploy's PyTorch engine serves
# WHEELS (default .whl/awq) holds the wheels the machine lacks (plugins/awq/README.md lists them);
# the work folder AWQ_CHECK_DIR (default /tmp/awq-check) is kept between the stages.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELS=${WHEELS:-.whl/awq}
SITE=${AWQ_SITE:-/tmp/awq-site}
# Each call installs the wheels it carries (one carry of 64 MiB cannot hold them all: bring them over two calls,
# the first with `install`, which stops there).
mkdir -p "$SITE"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
fi
# The sources on the path too: where the editable install does not take, they still import
# (gpu_check.py registers the plugin on a fresh plugin manager, with no entry point needed).
[ "${1:-all}" = install ] && { echo "installed $(ls "$SITE" | wc -l) entries in $SITE"; exit 0; }
export PYTHONPATH="$SITE:$PWD/core:$PWD/plugins/awq${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . -e plugins/awq 2>&1 | tail -1 || true
python3 - <<'PY'
import importlib.util
needed = ["llmcompressor", "compressed_tensors", "loguru", "datasets", "pyarrow", "pandas", "dill", "multiprocess", "xxhash",
          "PIL", "pydantic", "pydantic_core", "requests", "fastapi", "uvicorn", "gguf"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    raise SystemExit(f"missing here: {', '.join(missing)}; bring their wheels in {__import__('os').environ.get('WHEELS', '.whl/awq')}")
print("all imports found")
PY
export TUNEFORGE_LOAD_PLUGINS=
python3 plugins/awq/gpu_check.py "${1:-all}" "${2:-awq}" "${3:-64}"
