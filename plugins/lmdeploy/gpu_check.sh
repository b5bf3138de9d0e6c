#!/usr/bin/env bash
# The lmdeploy engine on a CUDA GPU machine that has torch, transformers, peft and triton but
# no lmdeploy and no network: installs the wheels carried in .gpu-lmd/ (LMDeploy 0.18 without its
# TurboMind binaries, so its PyTorch engine runs, and the small packages its pipeline, tuneforge
# and the tests import), then runs
#   tests  plugins/lmdeploy/tests on CUDA (conformance kit, adapters by name, a LoRA run, the server)
#   bench  decode tokens/s at batch 1/32/128, Qwen2.5-7B shape, random weights, bf16: pt beside lmdeploy
#   awq    the same for lmdeploy on random 4-bit AWQ weights of that shape (after bench on the same machine: it reuses its checkpoint)
#   exported DIR [bench]  a checkpoint `tuneforge export --format awq|gptq` wrote: LMDeploy serves its AutoAWQ-layout
#          copy (awq_layout.py) through `tuneforge infer --engine lmdeploy` and beside the pt engine on the export
#          itself (serve_exported.py), and with `bench` its decode tokens/s (for a 7B export). The pt engine reads
#          compressed-tensors with the awq plugin's wheels, which plugins/awq/gpu_check.sh leaves in /tmp/awq-site:
#          run that first on the same machine. A tiny model does not do: LMDeploy's AWQ loader asserts on its shapes.
# From the repository root:   bash plugins/lmdeploy/gpu_check.sh [tests|bench|awq|all|exported DIR [bench]]   (default: all)
# Each part fits one 10-minute call (run them as separate calls); every part logs under $OUT and a
# failing step does not stop the next one. How .gpu-lmd/ is made: plugins/lmdeploy/README.md.
set -x
PART=${1:-all}
WHEELS=${WHEELS:-.gpu-lmd}
OUT=${OUT:-/tmp/lmdeploy-gpu-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# -- setup (every part: a fresh machine has none of it) --------------------------------------
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
  || echo "SETUP FAILED: the wheels in $WHEELS did not install"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . -e plugins/lmdeploy 2>&1 | tail -3
if ! python3 -c "
import importlib.metadata as m, sys, tuneforge_lmdeploy.plugin, tuneforge.testing.pytest_plugin
sys.exit(0 if any(e.name == 'lmdeploy' for e in m.entry_points(group='tuneforge')) else 1)"; then
  echo "the editable installs did not take: the sources go on PYTHONPATH, with their entry points written by hand"
  export PYTHONPATH=$PWD/core:$PWD/plugins/lmdeploy:$PYTHONPATH
  mkdir -p /tmp/site/tuneforge-0.1.0.dist-info /tmp/site/tuneforge_lmdeploy-0.1.0.dist-info
  printf 'Metadata-Version: 2.1\nName: tuneforge\nVersion: 0.1.0\n' > /tmp/site/tuneforge-0.1.0.dist-info/METADATA
  printf '[pytest11]\ntuneforge = tuneforge.testing.pytest_plugin\n[console_scripts]\ntuneforge = tuneforge.cli:main\n' \
    > /tmp/site/tuneforge-0.1.0.dist-info/entry_points.txt
  printf 'Metadata-Version: 2.1\nName: tuneforge-lmdeploy\nVersion: 0.1.0\n' > /tmp/site/tuneforge_lmdeploy-0.1.0.dist-info/METADATA
  printf '[tuneforge]\nlmdeploy = tuneforge_lmdeploy.plugin\n' > /tmp/site/tuneforge_lmdeploy-0.1.0.dist-info/entry_points.txt
fi
# The tests' tiny models take SmolLM2's tokenizer (no weights) from tuneforge's model folder: no download.
mkdir -p /tmp/tfhome/models
if [ -f "$WHEELS/smollm2-tok.tar.gz" ] && [ ! -f /tmp/tfhome/models/smollm2-135m-instruct/.complete ]; then
  tar xzf "$WHEELS/smollm2-tok.tar.gz" -C /tmp/tfhome/models && rm -rf /tmp/tfhome/models/smollm2-135m-instruct \
    && mv /tmp/tfhome/models/smollm2-tok /tmp/tfhome/models/smollm2-135m-instruct
fi
export TUNEFORGE_HOME=/tmp/tfhome
python3 - > "$OUT/env.txt" 2>&1 <<'EOF'
import torch, transformers, peft, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
print("transformers", transformers.__version__, "peft", peft.__version__, "triton", triton.__version__)
import lmdeploy
from lmdeploy import turbomind
print("lmdeploy", lmdeploy.__version__, "turbomind available:", turbomind.is_available())
from tuneforge_lmdeploy.engine import why_not_runnable
print("why_not_runnable:", why_not_runnable())
EOF
cat "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv

if [ "$PART" = tests ] || [ "$PART" = all ]; then
  # A first answer outside pytest: its log says where LMDeploy breaks, if it does.
  timeout 240 python3 - > "$OUT/smoke.log" 2>&1 <<'EOF'
import time
from tuneforge.api import ChatRequest, SamplingParams, create_engine
from tuneforge.testing import tiny_model_dir, smollm2_dir
if __name__ == "__main__":  # LMDeploy starts worker processes by spawn
    path = tiny_model_dir("/tmp/lmd-smoke-tiny", tokenizer_dir=smollm2_dir(), hidden_size=128, num_heads=2, num_kv_heads=1,
                          intermediate_size=256, initializer_range=0.2)
    start = time.time()
    engine = create_engine("lmdeploy", path, session_len=1024, cache_max_entry_count=0.2, eager_mode=True)
    print(f"started in {time.time() - start:.1f} s, context {engine.context_length}")
    [[answer]] = engine.generate([ChatRequest([{"role": "user", "content": "hi"}], sampling=SamplingParams(max_tokens=8))])
    print("answer:", answer)
    print("stream:", list(engine.stream(ChatRequest([{"role": "user", "content": "hi"}], sampling=SamplingParams(max_tokens=8)))))
    engine.close()
    print("SMOKE OK")
EOF
  echo "smoke rc=$?"; tail -25 "$OUT/smoke.log"
  PER_TEST=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout 300")
  timeout 480 python3 -m pytest -q -p no:cacheprovider -rs --durations=0 $PER_TEST \
    plugins/lmdeploy/tests > "$OUT/tests.log" 2>&1
  echo "tests rc=$?"; grep -E "passed|failed|error" "$OUT/tests.log" | tail -3; grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
fi

if [ "$PART" = bench ] || [ "$PART" = all ]; then
  # each engine in its own process: LMDeploy after the pt engine's compiled run in one process hit a CUDA illegal memory access
  BENCH="python3 -m tuneforge.bench.decode --shape qwen2.5-7b --dtype bfloat16 --batch-sizes 1,32,128 --new-tokens 128 --prompt-tokens 256 --warmup 1 --repeats 2 --work-dir /tmp/qwen2.5-7b-random"
  timeout 280 $BENCH --runners lmdeploy --engine-option cache_max_entry_count=0.5 \
    --output "$OUT/bench-decode-qwen2.5-7b-lmdeploy.json" > "$OUT/bench.log" 2>&1
  timeout 280 $BENCH --runners pt --output "$OUT/bench-decode-qwen2.5-7b-pt.json" >> "$OUT/bench.log" 2>&1
  echo "bench rc=$?"; grep -E "^batch|decode tokens/s|Error|error" "$OUT/bench.log" | tail -20; tail -8 "$OUT/bench.log"
fi
if [ "$PART" = awq ] || [ "$PART" = all ]; then
  # LMDeploy alone (the pt engine serves no AWQ without autoawq): random 4-bit weights of the same shape.
  [ -f /tmp/qwen2.5-7b-random/config.json ] || timeout 300 python3 -c "
from tuneforge.bench.decode import build_model, save_checkpoint
save_checkpoint(build_model('qwen2.5-7b', 'bfloat16', 'cuda'), '/tmp/qwen2.5-7b-random')" > "$OUT/bench-awq.log" 2>&1
  timeout 240 python3 -m tuneforge_lmdeploy.awq_random /tmp/qwen2.5-7b-random /tmp/qwen2.5-7b-awq --group-size 128 >> "$OUT/bench-awq.log" 2>&1
  echo "awq checkpoint rc=$?"
  timeout 420 python3 -m tuneforge.bench.decode --shape qwen2.5-7b --dtype bfloat16 --batch-sizes 1,32,128 \
    --new-tokens 128 --prompt-tokens 256 --warmup 1 --repeats 2 --no-compile --runners lmdeploy \
    --checkpoint /tmp/qwen2.5-7b-awq --engine-option cache_max_entry_count=0.5 --engine-option model_format=awq \
    --output "$OUT/bench-decode-qwen2.5-7b-awq.json" >> "$OUT/bench-awq.log" 2>&1
  echo "bench awq rc=$?"; grep -E "^batch|Error|error" "$OUT/bench-awq.log" | tail -20; tail -8 "$OUT/bench-awq.log"
fi
if [ "$PART" = exported ]; then
  EXPORTED=${2:?give the exported checkpoint folder}
  export PYTHONPATH=$PYTHONPATH:${AWQ_SITE:-/tmp/awq-site}
  printf '{"messages": [{"role": "user", "content": "Summarise meeting %s: we discussed hiring."}]}\n' 1 2 3 4 > /tmp/exported-requests.jsonl
  timeout 240 tuneforge infer --engine lmdeploy --model "$EXPORTED" --max-new-tokens 16 --input /tmp/exported-requests.jsonl \
    --output "$OUT/exported-infer.jsonl" > "$OUT/exported-infer.log" 2>&1
  echo "infer rc=$?"; tail -5 "$OUT/exported-infer.log"; head -c 600 "$OUT/exported-infer.jsonl"; echo
  timeout 300 python3 plugins/lmdeploy/serve_exported.py "$EXPORTED" > "$OUT/exported.log" 2>&1
  echo "serve_exported rc=$?"; tail -25 "$OUT/exported.log"
  [ "${3:-}" = bench ] && timeout 280 python3 -m tuneforge.bench.decode --shape qwen2.5-7b --dtype bfloat16 --batch-sizes 1,32,128 \
    --new-tokens 128 --prompt-tokens 256 --warmup 1 --repeats 2 --no-compile --runners lmdeploy \
    --checkpoint "$EXPORTED" --engine-option cache_max_entry_count=0.5 \
    --output "$OUT/bench-decode-qwen2.5-7b-exported.json" > "$OUT/bench-exported.log" 2>&1
  [ "${3:-}" = bench ] && { echo "bench exported rc=$?"; grep -E "^batch|Error|error" "$OUT/bench-exported.log" | tail -20; }
fi
ls -la "$OUT"
