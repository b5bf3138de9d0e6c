#!/usr/bin/env bash
# A first run of tuneforge-ascend on a real Ascend NPU (a 910B): docs/ascend.md, "A first run on a 910B".
# Run from a tuneforge checkout with tuneforge, tuneforge-ascend, CANN and the matching torch_npu installed
# and /usr/local/Ascend/ascend-toolkit/set_env.sh sourced. Nothing here has run on an NPU yet.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
echo "== 1. doctor"; tuneforge doctor
python -c "import torch, torch_npu; print('npu available:', torch.npu.is_available(), 'bf16:', torch.npu.is_bf16_supported())"
echo "== 2. the plugin's tests"; python -m pytest -q plugins/ascend/tests
echo "== 3. the fused operators against their formulas"; python plugins/ascend/npu_check.py
echo "== 4. a short LoRA run on npu and on cpu, same seed"
python - "$work" <<'PY'
import json, sys
from pathlib import Path
from tuneforge.testing import tiny_model_dir
work = Path(sys.argv[1])
tiny_model_dir(work / "tiny")
rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"{2 * i}."}]} for i in range(32)]
(work / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
PY
flags=(--model "$work/tiny" --dataset "$work/rows.jsonl" --max-steps 8 --logging-steps 1 --save-steps 100 --per-device-batch-size 4 --max-length 128 --seed 0 --torch-dtype float32)
tuneforge sft "${flags[@]}" --device npu --output-dir "$work/npu"
tuneforge sft "${flags[@]}" --device npu --output-dir "$work/npu-plain" --no-fused-norm --no-fused-swiglu --no-fused-rope --attn-implementation sdpa
tuneforge sft "${flags[@]}" --device cpu --output-dir "$work/cpu"
python - "$work" <<'PY'
import sys
from tuneforge.testing import step_losses
for run in ("npu", "npu-plain", "cpu"):
    print(f"{run:>9}:", " ".join(f"{loss:.4f}" for loss in step_losses(f"{sys.argv[1]}/{run}")))
PY
echo "== 7. the pt engine on npu (answers a batch)"
tuneforge infer --model "$work/npu" --device npu --input "$work/rows.jsonl" --output "$work/answers.jsonl" --max-new-tokens 8
head -3 "$work/answers.jsonl"
echo "done; the runs are in $work"
