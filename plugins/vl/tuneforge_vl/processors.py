"""Loading the processors of InternVL3 and SmolVLM/Idefics3, with or without torchvision.

transformers' ``InternVLProcessor`` and ``SmolVLMProcessor`` hold a video processor,
and transformers builds video processors only with ``torchvision`` installed: without
it, even a processor that is given only images cannot be built or loaded. Where
torchvision is missing (so no family can encode videos), ``load_images_processor``
builds the same processor class from the checkpoint's tokenizer, image processor and
processor settings, without the video processor. What it does with images (the image
token layout, the pixel tensors) is the processor's own code either way.

The processor's chat template is the model's own (the multimodal one); where a
checkpoint also gives its tokenizer another (an InternVL3 "-hf" tokenizer comes from
Qwen2.5-VL's, with its template in ``tokenizer_config.json``, while the processor's is in
``chat_template.json``), the tokenizer is given the processor's, so what tuneforge
compares its template with and what a saved tokenizer carries is the model's template.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

# processor_config.json keys each processor takes in its constructor, beside its parts
_SETTINGS = {"InternVLProcessor": ("image_seq_length",), "SmolVLMProcessor": ("image_seq_len",), "Idefics3Processor": ("image_seq_len",)}


def has_video_processors() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


@functools.lru_cache(maxsize=None)
def images_only(processor_class: type) -> type:
    """``processor_class`` without its video processor: the same code for text and images.

    The subclass keeps the parent's name, so what it saves loads as the parent class
    wherever torchvision is installed.
    """

    def get_attributes(cls):
        return [name for name in processor_class.get_attributes() if name != "video_processor"]

    return type(processor_class.__name__, (processor_class,), {
        "get_attributes": classmethod(get_attributes),
        "__module__": processor_class.__module__,
        "__doc__": f"{processor_class.__name__} for images only (built without torchvision, which video processors need).",
    })


def _settings(path: Path, class_name: str) -> dict:
    config = path / "processor_config.json"
    data = json.loads(config.read_text()) if config.is_file() else {}
    return {key: data[key] for key in _SETTINGS.get(class_name, ()) if key in data}


def _chat_template(path: Path, tokenizer) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        file = path / name
        if file.is_file():
            text = file.read_text()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return getattr(tokenizer, "chat_template", None)


def load_images_processor(path: str, processor_class: type, trust_remote_code: bool = False):
    """The checkpoint's processor: ``AutoProcessor`` where torchvision is installed, else ``processor_class`` for images only.

    A checkpoint saved where torchvision was missing (a run fine-tuned on a machine without
    it, served on one with it) carries no video processor settings: it is loaded for images
    only there too, instead of failing."""
    from transformers import AutoProcessor

    takes_video = "video_processor" in processor_class.get_attributes()
    if has_video_processors() or not takes_video:
        try:
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        except OSError as exc:
            if not takes_video or "video processor" not in str(exc):
                raise
            processor = _for_images(path, processor_class, trust_remote_code)
    else:
        processor = _for_images(path, processor_class, trust_remote_code)
    if isinstance(getattr(processor, "chat_template", None), str) and processor.chat_template.strip():
        processor.tokenizer.chat_template = processor.chat_template
    return processor




def _for_images(path: str, processor_class: type, trust_remote_code: bool):
    """``processor_class`` for images only, from the checkpoint's tokenizer, image processor and settings."""
    from transformers import AutoImageProcessor, AutoTokenizer

    folder = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    images = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    cls = images_only(processor_class)
    return cls(images, tokenizer, None, chat_template=_chat_template(folder, tokenizer), **_settings(folder, processor_class.__name__))
