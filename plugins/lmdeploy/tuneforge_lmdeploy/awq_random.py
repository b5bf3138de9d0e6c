"""A random 4-bit AWQ checkpoint of a model's shape, for LMDeploy's speed on AWQ weights (no calibration).

Reads a Llama/Qwen2-style checkpoint (``config.json`` and safetensors) and writes the
same model in AutoAWQ's GEMM layout, which LMDeploy's PyTorch engine loads
(``quant_method: awq``): every linear layer of the decoder as ``qweight`` (int32,
``[in, out/8]``), ``qzeros`` and float16 ``scales`` per group of ``group_size`` inputs,
filled with random 4-bit values; embeddings, norms, biases and the output head are
copied in float16. The answers are noise; the shapes, and so the speed, are the model's::

    python -m tuneforge_lmdeploy.awq_random SRC DST --group-size 128

The tokenizer files are copied, so ``python -m tuneforge.bench.decode --checkpoint DST``
can serve it (``--engine-option model_format=awq``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def convert(source: str | Path, target: str | Path, *, group_size: int = 128, seed: int = 0) -> Path:
    import torch
    from safetensors import safe_open

    from tuneforge.api import TuneforgeError

    from .awq_layout import write_awq_checkpoint

    source, target = Path(source), Path(target)
    config = json.loads((source / "config.json").read_text())
    shards = sorted(source.glob("*.safetensors"))
    if not shards:
        raise TuneforgeError(f"'{source}' holds no safetensors weights; give a checkpoint saved with save_pretrained.")
    target.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as weights:
            for name in weights.keys():
                module = name.rsplit(".", 2)
                if len(module) == 3 and module[1] in LINEARS and module[2] == "weight":
                    out_features, in_features = weights.get_slice(name).get_shape()
                    if in_features % group_size or out_features % 8:
                        raise TuneforgeError(
                            f"{name} is {out_features}x{in_features}: AWQ needs inputs in whole groups of {group_size} and "
                            f"outputs in multiples of 8; give another --group-size."
                        )
                    base = name[: -len(".weight")]
                    groups = in_features // group_size
                    tensors[base + ".qweight"] = torch.randint(-(2**31), 2**31 - 1, (in_features, out_features // 8), generator=generator, dtype=torch.int64).to(torch.int32)
                    tensors[base + ".qzeros"] = torch.full((groups, out_features // 8), 0x88888888 - 2**32, dtype=torch.int32)  # zero point 8
                    tensors[base + ".scales"] = torch.full((groups, out_features), 0.02 / 8, dtype=torch.float16)
                else:
                    tensors[name] = weights.get_tensor(name).to(torch.float16)
    write_awq_checkpoint(source, target, tensors, config, group_size)
    return target


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m tuneforge_lmdeploy.awq_random", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a checkpoint directory (config.json, safetensors)")
    parser.add_argument("target", help="where the AWQ checkpoint goes")
    parser.add_argument("--group-size", type=int, default=128)
    args = parser.parse_args(argv)
    written = convert(args.source, args.target, group_size=args.group_size)
    print(f"Wrote a random AWQ checkpoint of {args.source} to {written}.")
    return written


if __name__ == "__main__":
    main()
