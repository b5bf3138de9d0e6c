"""Registers the ``awq`` and ``gptq`` exporters; llmcompressor is imported only when one runs.

Both write a 4-bit weight-only (W4A16) compressed-tensors checkpoint through
llmcompressor, calibrated on the run's own rows, and measure it against the merged
model it came from (``tuneforge_awq.quality``). Their options differ only in the
default of ``--symmetric``: AWQ keeps a zero point per group (asymmetric), GPTQ
does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tuneforge.api import DoctorChecks, Exporter, hookimpl, option

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for


@dataclass
class QuantizedExportOptions:
    """What the awq and gptq exporters share (``--format awq --help``)."""

    group_size: int = option(128, "Weights per quantization group (one scale, and a zero point if asymmetric, each); it must divide the input size of every quantized layer (hidden size, intermediate size).", group="export")
    calibration_dataset: list[str] = option([], "Rows to calibrate on (files or registered dataset names, any dataset format); default: the run's own training rows.", group="export")
    num_calibration_samples: int = option(128, "How many rows calibrate the quantization (a random sample of the calibration rows).", group="export")
    calibration_max_length: int = option(512, "Tokens of each calibration row that are used (the rest is cut).", group="export")
    quality_rows: int = option(32, "Held-out rows the perplexity of the quantized and the merged model is measured on.", group="export")
    quality_prompts: int = option(16, "Held-out prompts both models answer greedily, for the answer agreement.", group="export")
    quality_max_new_tokens: int = option(64, "Tokens of each greedy answer compared.", group="export")
    max_quality_loss: Optional[float] = option(None, "Refuse to finish when the quantized model's held-out perplexity is more than this share above the merged model's (0.05: 5%); the merged model is then kept beside --output-dir.", group="export")


@dataclass
class AwqOptions(QuantizedExportOptions):
    """The awq exporter's options."""

    symmetric: bool = option(False, "Symmetric groups (no zero point); default: asymmetric, as AWQ is usually run.", group="export")


@dataclass
class GptqOptions(QuantizedExportOptions):
    """The gptq exporter's options."""

    symmetric: bool = option(True, "Symmetric groups (no zero point), as GPTQ is usually run; --no-symmetric keeps a zero point per group.", group="export")


def _export_awq(bundle, output_dir, options):
    from .quantize import export_quantized

    return export_quantized("awq", bundle, output_dir, options)


def _export_gptq(bundle, output_dir, options):
    from .quantize import export_quantized

    return export_quantized("gptq", bundle, output_dir, options)


@hookimpl
def tuneforge_exporters():
    yield Exporter(
        name="awq",
        description="Merge, then quantize the weights to 4 bits with AWQ (llmcompressor, W4A16): a compressed-tensors checkpoint for transformers, vLLM and LMDeploy, with a quality report",
        export=_export_awq,
        options=AwqOptions,
    )
    yield Exporter(
        name="gptq",
        description="Merge, then quantize the weights to 4 bits with GPTQ (llmcompressor, W4A16): a compressed-tensors checkpoint for transformers, vLLM and LMDeploy, with a quality report",
        export=_export_gptq,
        options=GptqOptions,
    )


@hookimpl
def tuneforge_doctor_checks():
    return DoctorChecks(imports={"llmcompressor": "llmcompressor>=0.14,<0.15"})
