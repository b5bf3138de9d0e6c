"""Nothing lost, nothing mixed up: the output dir, run identity, resuming at the end, seeds.

Real `tuneforge sft` runs (in process) on a tiny random Llama: an overwrite leaves
nothing of the old run, a resume refuses a checkpoint of another run, a folder that
is not a tuneforge run is never written into, resuming a finished run (or one killed
while publishing) ends with the same steps and weights, and one seed gives one adapter.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tuneforge.cli import cli
from tuneforge.modeling import read_run_record

from test_training import sft, write_chats

torch.set_num_threads(1)  # tiny models on shared cores


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.jsonl", n=16)


def args_for(model, data, out, steps=2, save_steps=1, *extra):
    return [
        "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", steps, "--per-device-batch-size", 2,
        "--logging-steps", 1, "--save-steps", save_steps, "--save-total-limit", 2, "--max-length", 64,
        "--learning-rate", 1e-2, "--lora-rank", 4, *extra,
    ]


def refused(result, *phrases):
    """A one-sentence refusal: exit code 1, one 'Error:' line holding ``phrases``, no traceback."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


def tensors(out: Path, name="adapter_model.safetensors") -> dict:
    return load_file(out / name)


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def run_id(out: Path) -> str:
    return json.loads((out / "tuneforge_started.json").read_text())["run_id"]


def checkpoint_ids(out: Path) -> dict[str, str]:
    return {
        p.name: json.loads((p / "tuneforge_checkpoint.json").read_text())["run_id"] for p in sorted(out.glob("checkpoint-*"))
    }


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()
    }


# 1. Overwriting replaces the whole old run; a resume takes only its own run's checkpoints.


def test_overwrite_leaves_nothing_of_the_old_run(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "run"
    # The old run: full weights and checkpoints with higher step numbers than the new run will reach.
    full = args_for(tiny_llama_dir, chats, out, 4, 2)
    at = full.index("--lora-rank")
    del full[at:at + 2]  # the LoRA tuners' option
    sft(*full, "--train-type", "full", "--learning-rate", 1e-4)
    old_id = run_id(out)
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-4").is_dir()
    (out / "checkpoint-4" / "marker").write_text("the old run's")

    sft(*args_for(tiny_llama_dir, chats, out, 2, 1), "--overwrite-output-dir")
    new_id = run_id(out)
    assert new_id != old_id
    # only the new run's checkpoints, each carrying its id; none of the old run's weights
    assert checkpoint_ids(out) == {"checkpoint-1": new_id, "checkpoint-2": new_id}
    assert not (out / "model.safetensors").exists() and not (out / ".replaced").exists()
    record = read_run_record(out)
    assert record.run_id == new_id and record.tuner == "lora" and record.train_metrics["global_step"] == 2

    # ... and the same weights as the same run in a fresh directory
    fresh = tmp_path / "fresh"
    sft(*args_for(tiny_llama_dir, chats, fresh, 2, 1))
    assert_same_tensors(tensors(out), tensors(fresh))


def test_overwrite_then_resume_continues_the_new_run_only(tiny_llama_dir, chats, tmp_path):
    """The reported sequence: an old run's checkpoints, an overwrite, then --resume of the new run."""
    out = tmp_path / "run"
    sft(*args_for(tiny_llama_dir, chats, out, 6, 3))  # checkpoint-3 and checkpoint-6 of the old run
    sft(*args_for(tiny_llama_dir, chats, out, 2, 1), "--overwrite-output-dir")
    new_id = run_id(out)
    result = sft(*args_for(tiny_llama_dir, chats, out, 3, 1), "--resume")
    assert "resuming from" in result.output and "checkpoint-2" in result.output
    record = read_run_record(out)
    assert record.train_metrics["global_step"] == 3 and record.run_id == new_id
    assert set(checkpoint_ids(out).values()) == {new_id}


def test_resume_refuses_a_checkpoint_of_another_run(tiny_llama_dir, chats, tmp_path):
    out, other = tmp_path / "run", tmp_path / "other"
    sft(*args_for(tiny_llama_dir, chats, out, 2, 1))
    sft(*args_for(tiny_llama_dir, chats, other, 3, 1))
    (out / "tuneforge_run.json").unlink()  # an unfinished run ...
    shutil.copytree(other / "checkpoint-3", out / "checkpoint-3")  # ... with another run's newer checkpoint beside its own
    before = snapshot(out)
    error = refused(
        sft(*args_for(tiny_llama_dir, chats, out, 3, 1), "--resume", expect_ok=False),
        "checkpoint-3", "another run", run_id(other), "--overwrite-output-dir",
    )
    assert run_id(out) in error
    assert snapshot(out) == before

    # A checkpoint without an id (not written by a tuneforge run that has one) is refused too.
    (out / "checkpoint-3" / "tuneforge_checkpoint.json").unlink()
    refused(sft(*args_for(tiny_llama_dir, chats, out, 3, 1), "--resume", expect_ok=False), "checkpoint-3", "another run")


def test_a_run_on_a_directory_another_live_run_writes_is_refused_until_that_one_ends(tiny_llama_dir, chats, tmp_path):
    """Two runs training into one directory (a resume or an overwrite started while the first is alive)
    would leave checkpoints of both; the second is refused, the first's files untouched."""
    out = tmp_path / "run"
    sft(*args_for(tiny_llama_dir, chats, out, 2, 1))
    (out / "tuneforge_run.json").unlink()  # an unfinished run, with checkpoints
    # The live run: another process holding the directory as a training run holds it.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tuneforge.training.output import claimed\n"
         "with claimed(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(out)
        for flag in ("--resume", "--overwrite-output-dir"):
            refused(
                sft(*args_for(tiny_llama_dir, chats, out, 4, 1), flag, expect_ok=False),
                str(out), "another tuneforge run that is still running", f"process {holder.pid}", "--resume",
            )
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()
    # Killed, it holds nothing any more: the resume goes on, and the run leaves no lock file.
    sft(*args_for(tiny_llama_dir, chats, out, 4, 1), "--resume")
    assert read_run_record(out).train_metrics["global_step"] == 4
    assert not (out / ".tuneforge.lock").exists()


def test_resume_and_overwrite_together_are_refused(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "run"
    sft(*args_for(tiny_llama_dir, chats, out, 1, 1))
    before = snapshot(out)
    refused(
        sft(*args_for(tiny_llama_dir, chats, out, 2, 1), "--resume", "--overwrite-output-dir", expect_ok=False),
        "--resume", "--overwrite-output-dir", "only one",
    )
    assert snapshot(out) == before


def test_overwrite_never_deletes_what_the_run_reads(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "run"
    sft(*args_for(tiny_llama_dir, chats, out, 1, 1))
    data = shutil.copy(chats, out / "my-data.jsonl")
    before = snapshot(out)
    refused(
        sft(*args_for(tiny_llama_dir, data, out, 1, 1), "--overwrite-output-dir", expect_ok=False),
        str(data), "choose another --output-dir",
    )
    # the run dir itself as the model (an adapter run continued in place)
    refused(sft(*args_for(out, chats, out, 1, 1), "--overwrite-output-dir", expect_ok=False), str(out))
    assert snapshot(out) == before


# 2. A folder that is not a tuneforge run is never written into.


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_run_is_refused(overwrite, tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    (out / "checkpoint-500").mkdir()  # e.g. another trainer's output
    before = snapshot(out)
    extra = ["--overwrite-output-dir"] if overwrite else []
    refused(
        sft(*args_for(tiny_llama_dir, chats, out, 1, 1), *extra, expect_ok=False),
        f"--output-dir '{out}'", "'notes.txt'", "no tuneforge run", "new or empty --output-dir",
    )
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["checkpoint-500", "notes.txt"]


def test_an_empty_folder_or_one_a_killed_run_left_is_used(tiny_llama_dir, chats, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    sft(*args_for(tiny_llama_dir, chats, empty, 1, 1))
    assert read_run_record(empty).train_metrics["global_step"] == 1

    leftovers = tmp_path / "leftovers"  # killed while writing its first checkpoint, or while clearing
    (leftovers / ".staging" / "checkpoint-1").mkdir(parents=True)
    (leftovers / ".replaced" / "checkpoint-9").mkdir(parents=True)
    sft(*args_for(tiny_llama_dir, chats, leftovers, 1, 1))
    assert sorted(p.name for p in leftovers.glob(".*")) == []


# 3. Resuming a finished run, or one killed while publishing, ends as the uninterrupted run.


def test_resuming_a_finished_run_trains_nothing_and_changes_nothing(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "run"
    sft(*args_for(tiny_llama_dir, chats, out, 3, 100))
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]  # the last step is always saved
    before = snapshot(out)
    result = sft(*args_for(tiny_llama_dir, chats, out, 3, 100), "--resume")
    assert "already finished after 3 steps" in result.output
    assert snapshot(out) == before  # no checkpoint-4, the same weights and record


def test_resuming_a_run_killed_while_publishing_gives_the_uninterrupted_result(tiny_llama_dir, chats, tmp_path):
    done, out = tmp_path / "done", tmp_path / "run"
    sft(*args_for(tiny_llama_dir, chats, done, 3, 2))
    shutil.copytree(done, out)
    # As a kill between two moves of the final publish leaves it: no record, the weights still in staging.
    (out / "tuneforge_run.json").unlink()
    (out / ".final").mkdir()
    os.replace(out / "adapter_model.safetensors", out / ".final" / "adapter_model.safetensors")
    os.replace(out / "tokenizer.json", out / ".final" / "tokenizer.json")

    sft(*args_for(tiny_llama_dir, chats, out, 3, 2), "--resume")
    record = read_run_record(out)
    assert record.train_metrics["global_step"] == 3 == read_run_record(done).train_metrics["global_step"]
    assert record.run_id == read_run_record(done).run_id  # the same run, finished
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert not (out / ".final").exists()
    assert_same_tensors(tensors(out), tensors(done))
    assert (out / "tokenizer.json").read_bytes() == (done / "tokenizer.json").read_bytes()


def test_a_finished_run_without_checkpoints_is_not_trained_again(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "run"
    sft(*args_for(tiny_llama_dir, chats, out, 1, 1))
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    before = snapshot(out)
    refused(sft(*args_for(tiny_llama_dir, chats, out, 1, 1), "--resume", expect_ok=False), "nothing to resume")
    assert snapshot(out) == before


# 4. One seed, one adapter.


def test_the_same_seed_gives_the_same_adapter(tiny_llama_dir, chats, tmp_path):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        sft(*args_for(tiny_llama_dir, chats, tmp_path / name, 2, 100), "--seed", seed)
        runs[name] = tensors(tmp_path / name)
    assert_same_tensors(runs["a"], runs["b"])  # exactly, though the process's generators moved on between them
    lora_a = [key for key in runs["a"] if "lora_A" in key]
    assert lora_a and any(not torch.equal(runs["a"][key], runs["c"][key]) for key in lora_a)


def test_the_same_seed_gives_the_same_adapter_in_preference_training(tiny_llama_dir, tmp_path):
    pytest.importorskip("tuneforge_dpo")
    import tuneforge_dpo.plugin

    from tuneforge.testing import plugin_installed

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(
        json.dumps({"prompt": f"What is {i} plus {i}?", "chosen": f"{i} plus {i} is {2 * i}.", "rejected": f"It is {2 * i + 1}."}) + "\n"
        for i in range(8)
    ))
    runs = []
    with plugin_installed(tuneforge_dpo.plugin, "dpo", "tuneforge-dpo"):
        for name in ("a", "b"):
            out = tmp_path / name
            result = CliRunner().invoke(
                cli, ["rlhf", "--method", "dpo", *map(str, args_for(tiny_llama_dir, pairs, out, 2, 100)), "--seed", 3],
                catch_exceptions=False,
            )
            assert result.exit_code == 0, result.output
            runs.append(tensors(out))
    assert_same_tensors(*runs)


def test_a_damaged_start_record_is_refused_on_resume_and_replaced_by_an_overwrite(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "run"
    sft(*args_for(tiny_llama_dir, chats, out, 2, 1))
    (out / "tuneforge_run.json").unlink()
    (out / "tuneforge_started.json").write_text("{not json")
    refused(sft(*args_for(tiny_llama_dir, chats, out, 2, 1), "--resume", expect_ok=False), "tuneforge_started.json", "--overwrite-output-dir")
    sft(*args_for(tiny_llama_dir, chats, out, 2, 1), "--overwrite-output-dir")
    assert read_run_record(out).run_id == run_id(out)


@pytest.mark.parametrize("step", [2, 5])  # the middle of the first epoch, and of the second
def test_a_run_resumed_mid_epoch_ends_with_the_uninterrupted_weights(step, tiny_llama_dir, chats, tmp_path):
    """4 optimizer steps an epoch (16 rows, 2 a batch, 2 batches a step): the sampler's epoch and the skipped batches."""
    done, out = tmp_path / "done", tmp_path / "run"
    args = ["--gradient-accumulation-steps", 2, "--save-total-limit", 10]
    sft(*args_for(tiny_llama_dir, chats, done, 7, 1), *args)
    shutil.copytree(done, out)
    (out / "tuneforge_run.json").unlink()
    for checkpoint in out.glob("checkpoint-*"):
        if int(checkpoint.name.split("-")[1]) > step:
            shutil.rmtree(checkpoint)
    result = sft(*args_for(tiny_llama_dir, chats, out, 7, 1), *args, "--resume")
    assert f"checkpoint-{step}" in result.output
    assert read_run_record(out).train_metrics["global_step"] == 7
    assert_same_tensors(tensors(out), tensors(done))


def test_a_checkpoint_with_a_reference_adapter_beside_resumes_the_trained_adapter(tiny_llama_dir, tmp_path):
    # A continued adapter trained beside a frozen copy of itself (GRPO's and DPO's reference, "ref")
    # checkpoints the trained adapter at the root and the copy in ref/. transformers before 5.23 loads
    # only the sub-folder's on a resume, so the trained adapter restarted as the run began (GRPO's KL to
    # its reference fell from 0.01 to 2e-5 at a GPU resume): the Trainer's load is followed by this one.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.training.trainer import load_policy_adapter

    def lora(model, name):
        return {key: value.detach().clone() for key, value in model.named_parameters() if f"lora_B.{name}." in key}

    settings = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(**settings))
    model.add_adapter("ref", LoraConfig(**settings))
    checkpoint = tmp_path / "checkpoint-5"
    model.save_pretrained(checkpoint)  # default at the root, ref in ref/
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "ref" / "adapter_model.safetensors").is_file()
    trained, reference = lora(model, "default"), lora(model, "ref")
    assert trained and not all(torch.equal(trained[k], reference[k.replace(".default.", ".ref.")]) for k in trained)
    with torch.no_grad():  # the trained adapter as a resumed run builds it: not yet the checkpoint's
        for key, value in model.named_parameters():
            if "lora_B.default." in key:
                value.zero_()
    assert load_policy_adapter(model, str(checkpoint))
    assert all(torch.equal(value, trained[key]) for key, value in lora(model, "default").items())
    assert all(torch.equal(value, reference[key]) for key, value in lora(model, "ref").items())  # the copy untouched

    single = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(**settings))
    single.save_pretrained(tmp_path / "one")
    assert not load_policy_adapter(single, str(tmp_path / "one"))  # one adapter: the Trainer's own load does it


def test_a_checkpoint_of_a_finished_run_loads_as_the_run_at_its_step(tiny_llama_dir, chats, tmp_path):
    from tuneforge.errors import TuneforgeError
    from tuneforge.modeling import load_for_inference

    out = tmp_path / "run"
    sft(*args_for(tiny_llama_dir, chats, out, 2, 1))
    ids = torch.tensor([[1, 2, 3, 4, 5]])

    def logits(spec):
        loaded = load_for_inference(str(spec))
        with torch.no_grad():
            return loaded.model(ids).logits

    final = logits(out)
    assert torch.equal(logits(out / "checkpoint-2"), final)  # the last checkpoint holds the final weights
    assert not torch.allclose(logits(out / "checkpoint-1"), final)  # the first, the adapter after one step
    onward = tmp_path / "onward"  # a run built on the first checkpoint, loaded again later, merges it first
    sft(*args_for(str(out / "checkpoint-1"), chats, onward, 1, 100))
    assert read_run_record(onward).base_adapters == (str(out / "checkpoint-1"),)
    assert not torch.allclose(logits(onward), logits(out / "checkpoint-1"))

    record = out / "tuneforge_run.json"
    record.rename(tmp_path / "held.json")  # as while the run still trains, or after it was killed
    with pytest.raises(TuneforgeError, match=r"is a checkpoint of a run that has not finished \('.*run' has no "
                                             r"tuneforge_run.json\); finish the run with --resume"):
        load_for_inference(str(out / "checkpoint-1"))
    (tmp_path / "held.json").rename(record)

    other = tmp_path / "other"  # a checkpoint copied into another run's directory is not that run's
    sft(*args_for(tiny_llama_dir, chats, other, 1, 100))
    shutil.copytree(out / "checkpoint-1", other / "checkpoint-9")
    with pytest.raises(TuneforgeError, match=f"was written by run {run_id(out)}, but '.*other' now holds run {run_id(other)}"):
        load_for_inference(str(other / "checkpoint-9"))
