"""``ModelFamily.processor_kwargs`` of the vl families: the image options (--max-pixels, --min-pixels) as the
keyword arguments another program's processor of the checkpoint takes (vLLM's ``mm_processor_kwargs``).
A processor loaded without options and given them processes an image exactly as the one loaded with them."""

import pytest
import torch
from PIL import Image

from tuneforge.api import resolve_bundle
from tuneforge_vl.testing import tiny_internvl_dir, tiny_qwen_vl_dir, tiny_smolvlm_dir

BUILDERS = {
    "qwen2_vl": lambda path: tiny_qwen_vl_dir(path, "qwen2_vl"),
    "qwen2_5_vl": lambda path: tiny_qwen_vl_dir(path, "qwen2_5_vl"),
    "smolvlm": lambda path: tiny_smolvlm_dir(path, architecture="smolvlm"),
    "idefics3": lambda path: tiny_smolvlm_dir(path, architecture="idefics3"),
    "internvl3": tiny_internvl_dir,
}
CASES = [  # (checkpoint, options, what the family gives vLLM)
    ("qwen2_vl", {"max_pixels": 28 * 28}, {"size": {"shortest_edge": 28 * 28, "longest_edge": 28 * 28}}),
    ("qwen2_5_vl", {"max_pixels": 84 * 84, "min_pixels": 56 * 56}, {"size": {"shortest_edge": 56 * 56, "longest_edge": 84 * 84}}),
    ("smolvlm", {"max_pixels": 32 * 32 + 100}, {"size": {"longest_edge": 32}}),
    ("idefics3", {"max_pixels": 96 * 96}, {"size": {"longest_edge": 96}}),
    ("internvl3", {"max_pixels": 32 * 32}, {"max_patches": 1}),
    ("internvl3", {"min_pixels": 3 * 32 * 32}, {"min_patches": 3}),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processor-kwargs")
    return {name: build(folder / name) for name, build in BUILDERS.items()}


def picture():
    gradient = torch.arange(48 * 96, dtype=torch.float32).reshape(48, 96) % 251
    return Image.fromarray(torch.stack([gradient, gradient.flip(1), 255 - gradient], -1).to(torch.uint8).numpy())


@pytest.mark.parametrize("name,options,expected", CASES, ids=[f"{c[0]}-{'-'.join(c[1])}" for c in CASES])
def test_the_options_as_processor_kwargs_process_an_image_as_the_family_processor_does(manager, checkpoints, name, options, expected):
    loaded = resolve_bundle(checkpoints[name], family_options=options)
    assert loaded.processor_kwargs == expected
    plain = resolve_bundle(checkpoints[name]).processor.image_processor
    given = plain(images=[picture()], return_tensors="pt", **loaded.processor_kwargs)
    wanted = loaded.processor.image_processor(images=[picture()], return_tensors="pt")
    assert sorted(given) == sorted(wanted)
    for key in wanted:
        assert torch.equal(torch.as_tensor(given[key]), torch.as_tensor(wanted[key])), key
    # and the options changed something: the checkpoint's own settings process it otherwise
    default = plain(images=[picture()], return_tensors="pt")
    assert any(torch.as_tensor(default[key]).shape != torch.as_tensor(wanted[key]).shape for key in wanted)


def test_without_options_the_families_give_nothing(manager, checkpoints):
    for path in checkpoints.values():
        bundle = resolve_bundle(path)
        assert bundle.family.processor_kwargs is not None and bundle.processor_kwargs == {}
