"""Test kits of the vision-language plugin: tiny random-weight checkpoints of each family
(built from transformers config classes in about a second on a CPU) and images to put in
rows and requests. One module per family; this package re-exports what tests import."""

from .internvl import tiny_internvl_dir  # noqa: E402,F401
from .qwen_vl import tiny_qwen_vl_dir  # noqa: E402,F401
from .smolvlm import tiny_smolvlm_dir  # noqa: E402,F401
