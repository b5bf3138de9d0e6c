"""tuneforge export --merge-lora: a hand-built LoRA output dir becomes a standalone checkpoint."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tuneforge import hookimpl
from tuneforge.config import ExportConfig
from tuneforge.errors import TuneforgeError
from tuneforge.export import run_export
from tuneforge.registry import RegistryError

TUNEFORGE = str(Path(sys.executable).with_name("tuneforge"))
PROBE_IDS = [[1, 504, 3575, 282, 4649, 314, 7042, 30, 2, 198, 44, 3]]
ENV = dict(os.environ, TUNEFORGE_LOAD_PLUGINS="", OMP_NUM_THREADS="1")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_record(base_model: str, *, tuner: str, saves_adapter: bool) -> dict:
    return {
        "tuneforge_version": "0.1.0",
        "method": "sft",
        "config": {},
        "base_model": base_model,
        "model_family": "llama",
        "template": "default",
        "tuner": tuner,
        "saves_adapter": saves_adapter,
        "torch_dtype": "float32",
        "plugins": {"tuneforge": "0.1.0"},
        "data": {"fingerprint": "f00d"},
        "created": "2026-11-22T12:00:00+0000",
    }


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_llama_dir):
    """An output dir as `tuneforge sft --train-type lora` leaves it, with the logits base + adapter give."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("lora-run")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ids = torch.tensor(PROBE_IDS)
    with torch.no_grad():
        base_logits = base(ids).logits
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a trained adapter moves the logits noticeably
        adapted_logits = peft_model(ids).logits
    assert (adapted_logits - base_logits).abs().max() > 1e-2, "the adapter must change the logits for the test to mean anything"
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)
    (out / "tuneforge_run.json").write_text(json.dumps(_run_record(tiny_llama_dir, tuner="lora", saves_adapter=True)))
    torch.save(adapted_logits, out.parent / f"{out.name}-expected.pt")
    return out, adapted_logits, base_logits


def _plain_transformers_logits(model_dir: Path, save_to: Path) -> subprocess.CompletedProcess:
    """Load ``model_dir`` where neither tuneforge nor peft can be imported; save its logits."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["tuneforge"] = None
        sys.modules["peft"] = None
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r})
        tokenizer = AutoTokenizer.from_pretrained({str(model_dir)!r})
        assert tokenizer.chat_template, "the exported tokenizer must carry a chat template"
        prompt = tokenizer.apply_chat_template([{{"role": "user", "content": "Hi"}}], add_generation_prompt=True, tokenize=False)
        with torch.no_grad():
            logits = model(torch.tensor({PROBE_IDS!r})).logits
        torch.save({{"logits": logits, "prompt": prompt, "eos": model.generation_config.eos_token_id}}, {str(save_to)!r})
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=ENV)


def test_merge_lora_export_loads_with_plain_transformers(lora_run, tmp_path, smollm2_tokenizer):
    import torch

    run_dir, adapted_logits, base_logits = lora_run
    exported = tmp_path / "merged"
    result = subprocess.run(
        [TUNEFORGE, "export", "--model", str(run_dir), "--merge-lora", "--output-dir", str(exported)],
        capture_output=True, text=True, timeout=300, env=ENV,
    )
    assert result.returncode == 0, result.stderr
    assert str(exported) in result.stderr

    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "tokenizer.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "tuneforge_run.json"}
    config_text = (exported / "config.json").read_text().lower()
    for word in ("tuneforge", "peft", "lora", "adapter", str(run_dir).lower()):
        assert word not in config_text
    readme = (exported / "README.md").read_text()
    assert str(run_dir.resolve()) in readme and "lora adapter merged" in readme
    assert f'from_pretrained("{exported.resolve()}")' in readme and ".partial" not in readme
    record = json.loads((exported / "tuneforge_export.json").read_text())
    assert record["source"] == str(run_dir.resolve()) and record["data_fingerprint"] == "f00d"
    assert record["template_matches_tokenizer"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]

    saved = tmp_path / "plain.pt"
    check = _plain_transformers_logits(exported, saved)
    assert check.returncode == 0, check.stderr
    plain = torch.load(saved)
    torch.testing.assert_close(plain["logits"], adapted_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain["logits"], base_logits, atol=1e-3)
    expected_prompt = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert plain["prompt"] == expected_prompt
    im_end = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in (plain["eos"] if isinstance(plain["eos"], list) else [plain["eos"]])


def test_full_weights_dir_is_written_as_it_is(tmp_path, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "full-run"
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    base.save_pretrained(run_dir)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(run_dir)
    (run_dir / "tuneforge_run.json").write_text(json.dumps(_run_record(tiny_llama_dir, tuner="full", saves_adapter=False)))

    written = run_export(ExportConfig(model=str(run_dir), output_dir=str(tmp_path / "out"), merge_lora=True))
    assert written == str(tmp_path / "out")
    assert "no adapter to merge" in (tmp_path / "out" / "README.md").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    ids = torch.tensor(PROBE_IDS)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, base(ids).logits)


def test_refuses_a_non_empty_output_dir_before_loading(lora_run, tmp_path):
    run_dir, _, _ = lora_run
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(TuneforgeError, match=r"'.*taken' already exists and is not empty; choose a new directory"):
        run_export(ExportConfig(model=str(run_dir), output_dir=str(target), merge_lora=True))
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_an_empty_existing_output_dir_is_fine(lora_run, tmp_path):
    run_dir, _, _ = lora_run
    target = tmp_path / "empty"
    target.mkdir()
    run_export(ExportConfig(model=str(run_dir), output_dir=str(target), merge_lora=True))
    assert (target / "model.safetensors").is_file()


def test_a_failed_export_leaves_nothing_behind(lora_run, tmp_path):
    run_dir, _, _ = lora_run
    broken = tmp_path / "broken-run"
    broken.mkdir()
    for name in ("tuneforge_run.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "adapter_config.json"):
        if (run_dir / name).exists():
            (broken / name).write_bytes((run_dir / name).read_bytes())
    # adapter_model.safetensors is missing: loading the adapter fails half-way through the export
    target = tmp_path / "exports" / "merged"
    with pytest.raises(Exception):
        run_export(ExportConfig(model=str(broken), output_dir=str(target), merge_lora=True))
    assert not target.exists()
    assert list((tmp_path / "exports").iterdir()) == []


def test_not_an_output_dir(tmp_path, tiny_llama_dir):
    with pytest.raises(TuneforgeError, match="is not a tuneforge output dir .* pass the --output-dir of a `tuneforge sft` run"):
        run_export(ExportConfig(model=tiny_llama_dir, output_dir=str(tmp_path / "out"), merge_lora=True))
    assert not (tmp_path / "out").exists()
    with pytest.raises(TuneforgeError, match="does not exist"):
        run_export(ExportConfig(model=str(tmp_path / "nowhere"), output_dir=str(tmp_path / "out")))


def test_exporter_names(lora_run, tmp_path):
    run_dir, _, _ = lora_run
    with pytest.raises(TuneforgeError, match="--merge-lora and --exporter 'awq' ask for different exporters"):
        run_export(ExportConfig(model=str(run_dir), output_dir=str(tmp_path / "o"), exporter="awq", merge_lora=True))
    with pytest.raises(RegistryError, match="Unknown exporter 'merge-lro'.*Did you mean 'merge-lora'"):
        run_export(ExportConfig(model=str(run_dir), output_dir=str(tmp_path / "o"), exporter="merge-lro"))


class BundleExporter:
    """An exporter record of a plugin, in-process: writes what the bundle it receives says."""

    @hookimpl
    def tuneforge_exporters(self):
        from tuneforge.records import Exporter

        def export(bundle, output_dir, options):
            from tuneforge.modeling import ModelBundle

            assert isinstance(bundle, ModelBundle)
            (Path(output_dir) / "bundle.json").write_text(json.dumps({
                "spec": bundle.spec, "base": bundle.base_path, "tuner": bundle.run.tuner, "adapters": list(bundle.adapters),
                "family": bundle.family.name, "template": bundle.template_name, "eos": bundle.tokenizer.eos_token,
                "trust_remote_code": bundle.trust_remote_code, "destination": options["destination"],
            }))
            return output_dir

        yield Exporter(name="bundle-json", description="Writes the model bundle it receives", export=export)


def test_an_exporter_receives_the_model_bundle(lora_run, tmp_path, tiny_llama_dir):
    from tuneforge.testing import plugin_installed

    run_dir, _, _ = lora_run
    with plugin_installed(BundleExporter(), "bundle-json", "tuneforge-bundle-json"):
        written = run_export(ExportConfig(model=str(run_dir), output_dir=str(tmp_path / "o"), exporter="bundle-json"))
    seen = json.loads((Path(written) / "bundle.json").read_text())
    assert seen == {
        "spec": str(run_dir), "base": tiny_llama_dir, "tuner": "lora", "adapters": [str(run_dir)], "family": "llama",
        "template": "default", "eos": seen["eos"], "trust_remote_code": False, "destination": str((tmp_path / "o").resolve()),
    }
    assert seen["eos"]


def test_cli_reports_a_taken_output_dir_in_one_line(lora_run, tmp_path):
    run_dir, _, _ = lora_run
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    result = subprocess.run(
        [TUNEFORGE, "export", "--model", str(run_dir), "--merge-lora", "--output-dir", str(tmp_path / "taken")],
        capture_output=True, text=True, timeout=120, env=ENV,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "already exists and is not empty" in result.stderr
