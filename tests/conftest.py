"""The fixtures (smollm2_dir, smollm2_tokenizer, tiny_llama_dir) come from tuneforge.testing.pytest_plugin."""

import os

# The project's own tests never autoload whatever plugins happen to be installed;
# tests that need a plugin register it on a fresh manager or set the variable themselves.
os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""

