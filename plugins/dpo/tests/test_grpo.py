"""GRPO: option refusals before anything loads, a few real steps on a tiny random Llama with SmolLM2's tokenizer.

The tiny model's answers are noise, so the tests read what the run records (per-reward
means, failures, steps); the slow test trains the real SmolLM2 and asserts the reward rises.
"""

import json
from pathlib import Path

import pytest
import torch

from tuneforge.api import device_action_tools, load_for_inference, read_run_record
from tuneforge.testing import run_cli


def grpo(*args, expect_ok=True):
    result = run_cli("rlhf", "--method", "grpo", *map(str, args), ok=False)
    if expect_ok:
        assert result.exit_code == 0, result.output
    return result


def write_prompts(path: Path, n: int = 4) -> Path:
    rows = [{"prompt": f"Say a word about the number {i}.", "answer": str(i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_tool_rows(path: Path) -> Path:
    """device-actions-like rows with two of its tools each (the whole list, ~1,600 tokens a prompt, is slow on a CPU)."""
    tools = {t["function"]["name"]: t for t in device_action_tools}
    commands = [
        ("Mute me please.", "mute_microphone", {}),
        ("Start a timer for 5 minutes.", "start_timer", {"minutes": 5}),
        ("Leave the meeting.", "leave_meeting", {}),
        ("Set the volume to 30.", "set_volume", {"level": 30}),
    ]
    rows = []
    for text, name, arguments in commands:
        call = {"type": "function", "function": {"name": name, "arguments": arguments}}
        rows.append({
            "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "", "tool_calls": [call]}],
            "tools": [tools[name], tools["raise_hand"]],
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tool_rows(tmp_path_factory):
    return write_tool_rows(tmp_path_factory.mktemp("data") / "tool_rows.jsonl")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("data") / "prompts.jsonl")


REWARD_FILE = '''
from tuneforge.api import RewardFunction


def _mentions(row, completion):
    return float(row["answer"] in completion)


def _fragile(row, completion):
    if row["answer"] in ("1", "3"):
        raise ValueError("no verdict for odd numbers")
    return 1.0


def tuneforge_reward_functions():
    yield RewardFunction(name="mentions", description="1 when the answer names the row's number", score=_mentions)
    yield RewardFunction(name="fragile", description="raises on odd numbers", score=_fragile)
'''


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "my_rewards.py"
    path.write_text(REWARD_FILE)
    return path


def base_args(model, data, out, steps=2):
    return [
        "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", steps,
        "--per-device-batch-size", 4, "--num-generations", 2, "--max-completion-length", 8,
        "--logging-steps", 1, "--save-steps", 100, "--max-length", 256, "--learning-rate", 1e-2, "--lora-rank", 4,
    ]


# -- refusals: one sentence naming the value and the fix, before any weights load --------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--reward", "json_valid,no_such_reward"], "Unknown reward function 'no_such_reward'; choose from: "),
        (["--reward", "json_valid:heavy"], "The weight of reward 'json_valid' is 'heavy', not a number"),
        (["--num-generations", "3"], "The global batch of 4 answers (--per-device-batch-size 4 x --gradient-accumulation-steps 1) "
                                      "does not split into groups of --num-generations 3; pass --num-generations 2 or 4"),
        (["--num-generations", "1", "--per-device-batch-size", "1"], "--num-generations is 1; GRPO compares"),
        (["--epsilon", "0.3", "--epsilon-high", "0.1"], "--epsilon-high is 0.1, below --epsilon 0.3"),
        (["--temperature", "0"], "--temperature is 0.0; GRPO needs varied answers"),
        (["--val-split-ratio", "0.2"], "--method grpo takes no validation data"),
        (["--reward-file", "missing_rewards.py"], "The reward file 'missing_rewards.py' does not exist"),
        (["--reward", "length_penalty", "--reward-option", "reward_length_limit=0"], "--reward-length-limit is 0"),
        (["--reward", "format", "--reward-option", "reward_length_limit=9"], "The option 'reward_length_limit' belongs to none"),
        (["--rollout-engine-option", "gpu_memory_utilization=0.3"],
         "--rollout-engine-option is for --rollout-engine vllm, and this run samples with --rollout-engine pt; leave it out"),
        (["--rollout-engine", "vllm", "--rollout-engine-option", "enforce_eager"],
         "--rollout-engine-option 'enforce_eager' is not NAME=VALUE; give e.g. gpu_memory_utilization=0.3."),
        (["--rollout-engine", "vllm", "--train-type", "qlora"],
         "--rollout-engine vllm pushes the policy's weights, each LoRA layer's product added, into vLLM, which a QLoRA"),
        (["--rollout-engine", "vllm", "--train-type", "dora"], "which a DoRA adapter (its magnitudes rescale the whole weight) is not"),
    ],
)
def test_option_refusals(extra, message, tmp_path, prompts):
    out = tmp_path / "never"
    # the model does not exist: every refusal comes before anything is resolved or loaded
    result = grpo(*base_args(str(tmp_path / "no-model"), prompts, out), *extra, expect_ok=False)
    assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
    assert not out.exists()


def test_list_rewards_and_methods_name_grpo():
    methods = run_cli("list", "methods").output
    assert "grpo" in methods
    assert "action_match" in run_cli("list", "rewards").output


# -- data: the reference answer is cut off for the model and kept for the rewards -------------


def test_a_tool_calling_row_is_cut_before_its_answer():
    from tuneforge_dpo.prompts import convert_messages, convert_prompt, split_prompt

    from tuneforge.api import device_action_tools

    row = {
        "messages": [{"role": "user", "content": "Mute me."},
                     {"role": "assistant", "content": "", "tool_calls": [
                         {"type": "function", "function": {"name": "mute", "arguments": {}}}]}],
        "tools": device_action_tools, "meta": {"kind": "single"},
    }
    example = split_prompt(convert_messages(row))
    assert example["prompt"] == [{"role": "user", "content": "Mute me."}]
    assert example["tools"] == device_action_tools and example["row"] == row  # the rewards see the reference answer
    plain = split_prompt(convert_prompt({"prompt": "What is 2 + 2?", "system": "Be brief.", "answer": 4}))
    assert [m["role"] for m in plain["prompt"]] == ["system", "user"] and plain["row"]["answer"] == 4
    image = {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": "photo.png"}}]}
    with pytest.raises(Exception, match="--method grpo samples from text prompts"):
        split_prompt(convert_messages({"messages": [image]}))
    with pytest.raises(Exception, match="the row has no user turn to answer"):
        split_prompt(convert_messages({"messages": [{"role": "assistant", "content": "Hi."}]}))


# -- real steps on a tiny model ---------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_each_loss_type_trains_and_records_rewards(loss_type, tiny_llama_dir, tool_rows, tmp_path):
    out = tmp_path / loss_type
    # tool-calling rows, the reference answer cut off and kept for the default rewards
    kl = ["--beta", 0.05] if loss_type == "gspo" else []  # one case with a KL term to the disabled adapter
    engine = "trl" if loss_type == "dr_grpo" else "pt"  # one case sampled by trl's generate
    scale = ["--scale-rewards", "none"] if loss_type == "dr_grpo" else []  # Dr. GRPO's advantages: not divided by a std
    # SmolLM2's own chat template renders no tools: chatml shows the model the row's tools
    grpo(*base_args(tiny_llama_dir, tool_rows, out), "--template", "chatml", "--allow-template-drift",
         "--loss-type", loss_type, "--rollout-engine", engine, *kl, *scale)
    run = read_run_record(out)
    metrics = run.train_metrics
    if engine == "pt":  # 2 steps of 4 answers of at most 8 tokens, sampled by the engine
        assert metrics["rollouts"]["engine"] == "pt"
        assert 8 <= metrics["rollouts"]["answer_tokens"] <= 2 * 4 * 8
        assert metrics["rollouts"]["weight_syncs"] == 0  # it samples from the policy's own weights
    else:
        assert metrics["rollouts"] == {"engine": "trl"}
    assert run.method == "grpo" and run.tuner == "lora" and metrics["global_step"] == 2
    assert run.config["loss_type"] == loss_type and run.data["formats"] == {"prompt-messages": 4}
    assert run.data["train"]["samples"] == 4 and len(run.data["fingerprint"]) == 64
    assert run.data["train"]["tokens"] > 4 * 100  # each prompt holds its two tools
    assert metrics["rewards"] == {"json_valid": 1.0, "action_match": 1.0, "argument_f1": 1.0}
    for name in ("json_valid", "action_match", "argument_f1"):
        assert 0.0 <= metrics[f"reward_end/{name}"] <= 1.0
    assert isinstance(metrics["reward_start"], float) and isinstance(metrics["reward_end"], float)
    assert metrics["reward_failures"] == {"json_valid": 0, "action_match": 0, "argument_f1": 0}
    if kl:
        assert metrics["reference"] == "the starting model (adapter disabled)" and isinstance(metrics["kl"], float)
    else:
        assert metrics["reference"] == "none (--beta 0: no KL term)" and "kl" not in metrics
    assert (out / "adapter_model.safetensors").is_file() and not (out / "ref").exists()
    trained_with = torch.load(out / "training_args.bin", weights_only=False)  # what trl's trainer was given
    assert trained_with.scale_rewards == ("none" if scale else "group") == run.config["scale_rewards"]


def test_rollout_engine_vllm_is_refused_before_the_policy_loads_without_the_vllm_plugin(tiny_llama_dir, prompts, tmp_path):
    # this environment has no tuneforge-vllm (its tests, with real GRPO steps on vLLM: plugins/vllm/tests/test_vllm_grpo.py)
    result = grpo(*base_args(tiny_llama_dir, prompts, tmp_path / "out"), "--rollout-engine", "vllm", expect_ok=False)
    output = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert ("--rollout-engine vllm needs the vllm inference engine, which no installed plugin provides; install it "
            "(pip install 'tuneforge-vllm[gpu]', or 'tuneforge-vllm[cpu]' without a GPU) or pass --rollout-engine pt.") in output
    assert f"loading {tiny_llama_dir}" not in output  # refused before the policy's weights load


def test_engine_rollouts_sample_from_the_trainers_prompt_ids_in_order(varied_tiny_dir, tool_rows):
    from types import SimpleNamespace

    from tuneforge.api import Converted, TuneforgeError, load_for_inference
    from tuneforge_dpo import grpo
    from tuneforge_dpo.prompts import convert_messages, encode_prompts, split_prompt

    loaded = load_for_inference(varied_tiny_dir, template="chatml", allow_template_drift=True, torch_dtype="float32")
    # the prompts as a run prepares them (the device-actions tools, whose schemas' keys are not in sorted order)
    rows = [json.loads(line) for line in tool_rows.read_text().splitlines()][:2]
    examples = [Converted(split_prompt(convert_messages(row)), f"row {i}", "rows", "prompt-messages") for i, row in enumerate(rows, 1)]
    samples, _ = encode_prompts(examples, loaded.template, max_length=2048, completion_length=6, truncation="right")
    config = SimpleNamespace(rollout_engine="pt", template="chatml", temperature=0.0,
                             max_completion_length=6, per_device_batch_size=6, gradient_accumulation_steps=1)
    ctx = SimpleNamespace(config=config, train_dataset=samples, tokenizer=loaded.tokenizer, template=loaded.template, setup=None)
    rollouts = grpo.engine_rollouts(ctx)
    ids = [sample["prompt_ids"] for sample in samples]
    batch = [ids[0]] * 3 + [ids[1]] * 3
    answers = rollouts.sample(loaded.model, batch)
    assert len(answers) == 6 and rollouts.tokens == sum(map(len, answers))
    # greedy: each answer is the model's own greedy continuation of exactly the trainer's ids (a random model whose
    # weights vary enough that another prompt, such as the tools' keys in another order, continues differently)
    stop_ids = list(loaded.template.stop_token_ids)
    expected = {}
    for prompt in ids:
        output = loaded.model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                       eos_token_id=stop_ids, pad_token_id=stop_ids[0])
        expected[tuple(prompt)] = output[0, len(prompt):].tolist()
    assert expected[tuple(ids[0])] != expected[tuple(ids[1])]
    for prompt, answer in zip(batch, answers):
        assert answer == expected[tuple(prompt)][: len(answer)] and 1 <= len(answer) <= 6
        assert all(token not in stop_ids for token in answer[:-1])
    with pytest.raises(TuneforgeError, match="none of the run's prompts; pass --rollout-engine trl"):
        rollouts.sample(loaded.model, [ids[0][:-1]])
    rollouts.close()
    assert rollouts.engine is None


def test_engine_rollouts_render_the_prompts_the_trainer_holds(tiny_llama_dir, tool_rows):
    from tuneforge.api import Converted, load_for_inference
    from tuneforge_dpo.prompts import convert_messages, encode_prompts, split_prompt

    loaded = load_for_inference(tiny_llama_dir, template="chatml", allow_template_drift=True, torch_dtype="float32")
    rows = [json.loads(line) for line in tool_rows.read_text().splitlines()]
    examples = [Converted(split_prompt(convert_messages(row)), f"row {i}", "rows", "prompt-messages") for i, row in enumerate(rows, 1)]
    samples, _ = encode_prompts(examples, loaded.template, max_length=2048, completion_length=8, truncation="right")
    for sample in samples:
        conversation = json.loads(sample["conversation"])
        assert list(loaded.template.prompt(conversation["messages"], tools=conversation["tools"])) == sample["prompt_ids"]


def test_prompts_cut_on_the_left_are_refused_for_engine_rollouts(tiny_llama_dir, tool_rows, tmp_path):
    args = base_args(tiny_llama_dir, tool_rows, tmp_path / "cut")
    args[args.index("--max-length") + 1] = 64  # every prompt holds two tools: over 100 tokens
    result = grpo(*args, "--template", "chatml", "--allow-template-drift", "--truncation", "left", expect_ok=False)
    message = " ".join(result.output.split())
    assert result.exit_code == 1 and "4 prompts of the training data were cut on the left to fit --max-length 64" in message
    assert "raise --max-length, or pass --rollout-engine trl" in message


def test_a_template_that_renders_no_tools_is_refused_for_rows_with_tools(tiny_llama_dir, tmp_path):
    out = tmp_path / "no-tools"
    result = grpo(*base_args(tiny_llama_dir, "device-actions", out), "--max-length", 2048, "--max-samples", 4,
                  expect_ok=False)
    assert result.exit_code == 1
    assert "The chat template 'default' renders no tools, but the prompts of " in result.output
    assert "pass --template with one that renders them" in " ".join(result.output.split())


def test_a_raising_reward_counts_zero_and_the_run_finishes(tiny_llama_dir, prompts, reward_file, tmp_path):
    out = tmp_path / "fragile"
    result = grpo(*base_args(tiny_llama_dir, prompts, out), "--reward-file", reward_file,
                  "--reward", "mentions:2,fragile,length_penalty:0.5", "--reward-option", "reward_length_limit=20")
    assert "reward function 'fragile' failed on a sample (ValueError: no verdict for odd numbers)" in result.output
    metrics = read_run_record(out).train_metrics
    assert metrics["rewards"] == {"mentions": 2.0, "fragile": 1.0, "length_penalty": 0.5}
    # 2 steps x 4 answers = 8 samples; odd rows give half of them, whichever prompts were drawn
    failures = metrics["reward_failures"]
    assert failures["mentions"] == 0 and failures["length_penalty"] == 0 and 0 < failures["fragile"] < 8
    assert metrics["reward_failure_reasons"]["fragile"] == "ValueError: no verdict for odd numbers"
    assert 0.0 <= metrics["reward_end/fragile"] <= 1.0


def lora_b_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(path / "adapter_model.safetensors").items() if "lora_B" in k}


def sft_adapter(model, tmp_path) -> Path:
    """A one-step SFT LoRA adapter of ``model`` (in ``tmp_path/sft``), for GRPO to continue."""
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"Say a word about the number {i}."},
                                 {"role": "assistant", "content": f"{i} is a number."}]}) + "\n"
        for i in range(4)
    ))
    sft_out = tmp_path / "sft"
    result = run_cli("sft", "--model", model, "--dataset", str(chats), "--output-dir", str(sft_out),
                     "--max-steps", "1", "--max-length", "64", "--lora-rank", "4", "--learning-rate", "1e-2", ok=False)
    assert result.exit_code == 0, result.output
    return sft_out


def test_continue_from_an_sft_adapter_with_a_kl_term(tiny_llama_dir, prompts, tmp_path):
    sft_out = sft_adapter(tiny_llama_dir, tmp_path)
    out = tmp_path / "grpo"
    grpo(*base_args(str(sft_out), prompts, out), "--beta", 0.1, "--reward", "length_penalty",
         "--reward-option", "reward_length_limit=30")
    run = read_run_record(out)
    assert run.base_model == tiny_llama_dir and run.config["model"] == str(sft_out)
    assert run.train_metrics["reference"].startswith("the continued adapter")
    assert isinstance(run.train_metrics["kl"], float)
    before, after = lora_b_weights(sft_out), lora_b_weights(out)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert not (out / "ref").exists()
    # its last checkpoint (the frozen reference adapter beside the trained one) loads as the finished run
    assert (out / "checkpoint-2" / "ref").is_dir()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        final, last, start = (load_for_inference(str(p)).model(ids).logits for p in (out, out / "checkpoint-2", sft_out))
    assert torch.equal(last, final) and not torch.allclose(last, start)


def test_full_tuning_with_a_kl_term_uses_a_frozen_copy(tiny_llama_dir, prompts, tmp_path):
    out = tmp_path / "full"
    args = base_args(tiny_llama_dir, prompts, out, steps=1)
    del args[-2:]  # --lora-rank
    grpo(*args, "--train-type", "full", "--beta", 0.1,
         "--reward", "length_penalty", "--learning-rate", 1e-4)
    metrics = read_run_record(out).train_metrics
    assert metrics["reference"] == "a frozen copy of the starting model" and isinstance(metrics["kl"], float)
    assert (out / "model.safetensors").is_file()


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_llama_dir, prompts, tmp_path):
    out = tmp_path / "resumable"
    args = [*base_args(tiny_llama_dir, prompts, out), "--reward", "length_penalty", "--save-steps", 1]
    grpo(*args)
    assert (out / "checkpoint-2").is_dir()
    # the same run asked for one more step continues from checkpoint-2 instead of starting over
    result = grpo(*args, "--max-steps", 3, "--resume")
    assert "resuming from" in result.output and "checkpoint-2" in result.output
    assert read_run_record(out).train_metrics["global_step"] == 3
    # other prompts are refused: the checkpoint belongs to the first data
    other = write_prompts(tmp_path / "other.jsonl", n=6)
    result = grpo(*base_args(tiny_llama_dir, other, out), "--reward", "length_penalty", "--max-steps", 4, "--resume",
                  expect_ok=False)
    assert result.exit_code == 1 and "The data differs from the data of the run being resumed" in result.output


def test_qlora_is_refused_without_a_gpu(tiny_llama_dir, prompts, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine can run qlora")
    result = grpo(*base_args(tiny_llama_dir, prompts, tmp_path / "q"), "--train-type", "qlora", expect_ok=False)
    assert result.exit_code == 1 and "--train-type qlora needs a CUDA GPU" in result.output


def test_qlora_trains_on_a_gpu(tiny_llama_dir, prompts, tmp_path):
    pytest.importorskip("bitsandbytes")
    if not torch.cuda.is_available():
        pytest.skip("qlora needs a CUDA GPU")
    out = tmp_path / "qlora"
    grpo(*base_args(tiny_llama_dir, prompts, out), "--train-type", "qlora", "--beta", 0.1, "--reward", "length_penalty",
         "--reward-option", "reward_length_limit=30")
    run = read_run_record(out)
    assert run.tuner == "qlora" and run.train_metrics["reference"] == "the starting model (adapter disabled)"
    assert isinstance(run.train_metrics["kl"], float)


def test_the_rewards_get_each_answer_as_text_of_the_runs_template(tmp_path):
    from tuneforge.api import combine_rewards
    from tuneforge_dpo import grpo_rewards

    reward_file = tmp_path / "which_template.py"
    reward_file.write_text(
        "from tuneforge.api import RewardFunction\n\n"
        "def _score(row, completion):\n"
        "    return float(isinstance(completion, str) and getattr(completion, 'template', None) == 'the run template')\n\n"
        "def tuneforge_reward_functions():\n"
        "    yield RewardFunction(name='which_template', description='1 when the answer knows its template', score=_score)\n"
    )
    rewards = combine_rewards(["which_template"], files=[str(reward_file)])
    [score], weights = grpo_rewards.trl_reward_functions(rewards, grpo_rewards.RewardLog(print), ("<|im_end|>",), template="the run template")
    row = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    assert score(prompts=["hi"], completions=["Hello.<|im_end|>"], row=[row]) == [1.0] and weights == [1.0]


def test_the_weights_pushed_to_an_engine_are_the_merged_policy_and_leave_it_untouched(tiny_llama_dir):
    # --rollout-engine vllm gets these once a step: merging into a bf16 base and unmerging would round it every time
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge_dpo.rollouts import policy_weights

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    names = dict(base.state_dict())
    policy = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    pushed = dict(policy_weights(policy))
    assert all(torch.equal(p, before[name]) for name, p in policy.named_parameters())  # the policy as it was
    merged = copy.deepcopy(policy).merge_and_unload()
    expected = {name: p for name, p in merged.named_parameters()}
    assert pushed.keys() == expected.keys() and set(pushed) <= set(names)
    assert all(pushed[name].dtype == torch.bfloat16 for name in pushed)
    changed = [name for name in pushed if not torch.equal(pushed[name], names[name].to(torch.bfloat16))]
    assert changed and all(name.endswith("_proj.weight") for name in changed)
    for name in pushed:  # peft's merge adds in bf16; the push adds in float32, then rounds once
        assert (pushed[name].float() - expected[name].float()).abs().max() <= 2 ** -6 * expected[name].float().abs().max() + 1e-6


def load_pipeline():
    """plugins/dpo/agents_pipeline.py as a module (a script beside the plugin, not part of it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("agents_pipeline", Path(__file__).parents[1] / "agents_pipeline.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    return pipeline


def test_the_agents_pipeline_can_give_grpo_more_commands_to_refuse(tmp_path):
    pipeline = load_pipeline()
    train = [json.loads(line) for line in pipeline.TRAIN_SPLIT.read_text().splitlines() if line.strip()]
    prompts = [json.loads(line) for line in pipeline.grpo_prompts(tmp_path / "p.jsonl", 0.3).read_text().splitlines()]
    refusing = [row for row in prompts if "refusal" in row["meta"]["phenomena"]]
    assert prompts[: len(train)] == train  # every training row once, in order, then repeated commands to refuse
    assert all("refusal" in row["meta"]["phenomena"] for row in prompts[len(train):]) and len(prompts) > len(train)
    assert abs(len(refusing) / len(prompts) - 0.3) < 0.01
    assert sum("refusal" in row["meta"]["phenomena"] for row in train) / len(train) < 0.2  # the split's own share
    with pytest.raises(SystemExit, match="--grpo-refusal-share 1.5 is not a share"):
        pipeline.grpo_prompts(tmp_path / "q.jsonl", 1.5)


def test_the_agents_pipeline_can_keep_rows_from_sft_for_grpo(tmp_path):
    pipeline = load_pipeline()
    train = pipeline.training_rows()
    sft, grpo = pipeline.split_for_holdout(120)
    ids = lambda rows: [row["meta"]["id"] for row in rows]  # noqa: E731
    assert len(grpo) == 120 and len(sft) == len(train) - 120
    assert not set(ids(sft)) & set(ids(grpo)) and sorted(ids(sft) + ids(grpo)) == sorted(ids(train))
    assert ids(pipeline.split_for_holdout(120)[1]) == ids(grpo)  # the same rows for both stages' runs
    assert any("refusal" in row["meta"]["phenomena"] for row in grpo)
    prompts = pipeline.grpo_prompts(tmp_path / "p.jsonl", 0.3, grpo)
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    assert {row["meta"]["id"] for row in rows} == set(ids(grpo))  # refusals repeated from the held rows only
    assert abs(sum("refusal" in row["meta"]["phenomena"] for row in rows) / len(rows) - 0.3) < 0.02
    with pytest.raises(SystemExit, match="--sft-holdout 360 leaves no rows"):
        pipeline.split_for_holdout(len(train))


def test_the_agents_pipeline_can_have_grpo_sample_the_rl_split(tmp_path, capsys):
    # SFT on all of train, GRPO on the rl split's commands (none of them SFT's); the comparison run
    # trains SFT on both splits.
    pipeline = load_pipeline()
    args = pipeline.parse_args(["--grpo-split", "rl"])
    assert pipeline.sft_datasets(args, tmp_path, None) == ["device-actions"]
    assert pipeline.grpo_dataset(args, tmp_path, None) == "device-actions:rl"
    rl = pipeline.TRAIN_SPLIT.with_name("rl.jsonl")
    assert pipeline.load_split("rl") == [json.loads(line) for line in open(rl)]
    train_commands = {row["messages"][1]["content"] for row in pipeline.training_rows()}
    assert not train_commands & {row["messages"][1]["content"] for row in pipeline.load_split("rl")}

    extra = pipeline.parse_args(["--sft-extra-split", "rl"])
    assert pipeline.sft_datasets(extra, tmp_path, None) == ["device-actions", "device-actions:rl"]
    assert pipeline.grpo_dataset(extra, tmp_path, None) == "device-actions:train"
    # more commands to refuse, repeated from the rl split's own
    refusing = pipeline.parse_args(["--grpo-split", "rl", "--grpo-refusal-share", "0.3"])
    prompts = [json.loads(line) for line in open(pipeline.grpo_dataset(refusing, tmp_path, None))]
    assert {row["meta"]["split"] for row in prompts} == {"rl"} and len(prompts) > 400
    assert abs(sum("refusal" in row["meta"]["phenomena"] for row in prompts) / len(prompts) - 0.3) < 0.01
    for options, clash in ((["--grpo-split", "rl"], "--grpo-split rl and --sft-holdout"),
                           (["--sft-extra-split", "rl"], "--sft-extra-split rl and --sft-holdout")):
        with pytest.raises(SystemExit):
            pipeline.main(["--out", str(tmp_path / "d"), "--sft-holdout", "120", *options])
        assert clash in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_an_interrupted_continued_adapter_resumes_with_its_trained_weights(tiny_llama_dir, prompts, tmp_path):
    # Continuing an SFT adapter with a KL term keeps two adapters (the policy, and "ref", the SFT copy).
    # Resumed, the policy must be the checkpoint's, not the SFT adapter again: its KL to the reference at
    # the first resumed step is then above 0, as it was before the interruption. (The fused LoRA layers
    # are on, as on a GPU.)
    import shutil

    sft_out = sft_adapter(tiny_llama_dir, tmp_path)
    out = tmp_path / "grpo"
    args = [*base_args(str(sft_out), prompts, out), "--beta", 0.1, "--reward", "length_penalty",
            "--reward-option", "reward_length_limit=30", "--save-steps", 1, "--fused-lora"]
    grpo(*args)
    # interrupted after its first checkpoint: the second and the finished output are not there
    shutil.rmtree(out / "checkpoint-2")
    (out / "adapter_model.safetensors").unlink()
    (out / "tuneforge_run.json").unlink()
    result = grpo(*args, "--max-steps", 3, "--resume")
    assert "resuming from" in result.output and "checkpoint-1" in result.output
    log = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    kl = {entry["step"]: entry["kl"] for entry in log if "kl" in entry}
    assert kl[1] == 0.0  # the first step: the policy is the reference
    assert kl[2] > 0.0 and kl[3] > 0.0, kl  # resumed from the trained policy, not from the SFT adapter
    assert read_run_record(out).train_metrics["reference"].startswith("the continued adapter")


def test_accumulated_batches_are_sampled_together_and_learned_in_one_step(tiny_llama_dir, prompts, tmp_path):
    # --gradient-accumulation-steps 2: one optimizer step learns from the answers of two batches (8 here, to
    # 4 prompts), all sampled by the pt engine.
    runs = {}
    for accumulation in (1, 2):
        out = tmp_path / f"acc{accumulation}"
        grpo(*base_args(tiny_llama_dir, prompts, out, steps=1), "--gradient-accumulation-steps", accumulation,
             "--reward", "length_penalty", "--reward-option", "reward_length_limit=30")
        state = json.loads(sorted(out.glob("checkpoint-*"))[-1].joinpath("trainer_state.json").read_text())
        runs[accumulation] = (state, read_run_record(out).train_metrics["rollouts"])
    (one, one_rollouts), (two, two_rollouts) = runs[1], runs[2]
    assert one["global_step"] == two["global_step"] == 1
    assert one_rollouts["engine"] == two_rollouts["engine"] == "pt"
    tokens = lambda state: [e["num_tokens"] for e in state["log_history"] if "num_tokens" in e][-1]  # noqa: E731
    # the one step learned from every prompt of both batches: twice the prompt and answer tokens
    assert tokens(two) > 1.6 * tokens(one), (tokens(one), tokens(two))
    assert two_rollouts["answer_tokens"] > 1.6 * one_rollouts["answer_tokens"]


def test_num_iterations_two_samples_every_other_step_and_trains_on_each(tiny_llama_dir, prompts, tmp_path):
    # --num-iterations 2: the answers sampled for step 1 are learned from again at step 2 (clipped against the
    # policy that sampled them), so two steps sample once; with 1, each step samples its own
    from safetensors.torch import load_file

    runs = {}
    for iterations in (1, 2):
        out = tmp_path / f"mu{iterations}"
        grpo(*base_args(tiny_llama_dir, prompts, out, steps=2), "--num-iterations", iterations, "--save-steps", 1,
             "--reward", "length_penalty", "--reward-option", "reward_length_limit=30")
        state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
        step1 = load_file(str(out / "checkpoint-1" / "adapter_model.safetensors"))
        step2 = load_file(str(out / "checkpoint-2" / "adapter_model.safetensors"))
        moved = max((step2[k].float() - step1[k].float()).abs().max().item() for k in step1)
        runs[iterations] = (state, read_run_record(out).train_metrics["rollouts"], moved)
    (one, one_rollouts, one_moved), (two, two_rollouts, two_moved) = runs[1], runs[2]
    assert one["global_step"] == two["global_step"] == 2
    assert two_rollouts["answer_tokens"] < 0.6 * one_rollouts["answer_tokens"], (one_rollouts, two_rollouts)
    assert two_moved > 0 and one_moved > 0  # the second step learned, from the reused answers too


def test_the_agents_pipeline_passes_grpo_its_batch_layout(tmp_path, capsys):
    pipeline = load_pipeline()
    args = pipeline.parse_args(["--grpo-split", "rl", "--grpo-gradient-accumulation-steps", "4", "--grpo-learning-rate", "1e-4"])
    command = pipeline.grpo_command(args, "out/sft", "device-actions:rl", "out/grpo", ["--save-steps", "2"])
    value = lambda option: command[command.index(option) + 1]  # noqa: E731
    assert command[:3] == ["rlhf", "--method", "grpo"] and value("--model") == "out/sft"
    assert value("--gradient-accumulation-steps") == "4" and value("--per-device-batch-size") == "32"
    assert value("--dataset") == "device-actions:rl" and value("--learning-rate") == "0.0001"
    assert value("--save-steps") == "2" and value("--output-dir") == "out/grpo"
    assert value("--torch-dtype") == "float32"
    assert value("--reward") == "json_valid,action_match:2,argument_f1" and value("--lr-scheduler") == "cosine"
    steady = pipeline.grpo_command(pipeline.parse_args(["--grpo-lr-scheduler", "constant"]), "s", "d", "o", [])
    assert steady[steady.index("--lr-scheduler") + 1] == "constant"
    assert value("--num-iterations") == "1"
    reused = pipeline.grpo_command(pipeline.parse_args(["--grpo-num-iterations", "2"]), "s", "d", "o", [])
    assert reused[reused.index("--num-iterations") + 1] == "2"
    partial = pipeline.grpo_command(pipeline.parse_args(["--grpo-rewards", "json_valid,action_f1:2"]), "s", "d", "o", [])
    assert partial[partial.index("--reward") + 1] == "json_valid,action_f1:2"
    with pytest.raises(SystemExit):  # before any stage runs
        pipeline.parse_args(["--grpo-rewards", "json_valid,action_f2"])
    assert "--grpo-rewards json_valid,action_f2: Unknown reward function 'action_f2'" in capsys.readouterr().err
    assert pipeline.parse_args(["--stages", "sft", "--grpo-rewards", "nope"]).grpo_rewards == "nope"  # no GRPO stage
    defaults = pipeline.grpo_command(pipeline.parse_args([]), "s", "d", "o", [])
    assert defaults[defaults.index("--gradient-accumulation-steps") + 1] == "1"
    fast = pipeline.grpo_command(pipeline.parse_args(["--grpo-torch-dtype", "bfloat16"]), "s", "d", "o", [])
    assert fast[fast.index("--torch-dtype") + 1] == "bfloat16"
    assert "--seed" not in defaults  # the run's own default seed
    again = pipeline.grpo_command(pipeline.parse_args(["--grpo-seed", "7"]), "s", "d", "o", [])
    assert again[again.index("--seed") + 1] == "7"
    # checkpoints: kept as tuneforge does unless asked (more, to score a run step by step); a cut-off stage resumes
    assert pipeline.checkpoint_options(pipeline.parse_args([]), tmp_path) == ["--save-steps", "50", "--save-total-limit", "2"]
    (tmp_path / "checkpoint-5").mkdir()
    kept = pipeline.checkpoint_options(pipeline.parse_args(["--save-steps", "5", "--save-total-limit", "10"]), tmp_path)
    assert kept == ["--save-steps", "5", "--save-total-limit", "10", "--resume"]


def test_the_agents_pipeline_counts_the_commands_grpo_changed(tmp_path):
    # two answer files of the test split, scored by the dataset's own scorer: the changes are counted among
    # the tool commands only (a refusal that turned into a call is not one), with the sign test's p
    from tuneforge.api import score_tool_calls

    pipeline = load_pipeline()
    rows = pipeline.load_split("test")
    tools = [i for i, row in enumerate(rows) if row["messages"][-1].get("tool_calls")]
    refusal = next(i for i, row in enumerate(rows) if not row["messages"][-1].get("tool_calls"))
    wrong = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "leave_meeting", "arguments": {}}}]}

    def answers(path, wrong_rows):
        answered = [wrong if i in wrong_rows else row["messages"][-1] for i, row in enumerate(rows)]
        per_row = score_tool_calls(rows, answered)["per_row"]
        path.write_text("".join(json.dumps({"meta": row["meta"], "scores": s}) + "\n" for row, s in zip(rows, per_row)))
        return path

    wrong_tool = [i for i in tools if rows[i]["meta"]["actions"] != ["leave_meeting"]]
    before = answers(tmp_path / "sft-test.jsonl", set(wrong_tool[:6]))
    after = answers(tmp_path / "grpo-test.jsonl", set(wrong_tool[4:6] + wrong_tool[10:12]) | {refusal})
    change = pipeline.changes(before, after)
    assert change == {"right": 4, "wrong": 2, "commands": len(tools), "p": pytest.approx(2 * 22 / 64)}
    assert pipeline.changes(before, before) == {"right": 0, "wrong": 0, "commands": len(tools), "p": 1.0}
    one_sided = pipeline.changes(answers(tmp_path / "a.jsonl", set(wrong_tool[:8])), before)
    assert one_sided["right"] == 2 and one_sided["wrong"] == 0 and one_sided["p"] == pytest.approx(0.5)
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(before.read_text().splitlines(keepends=True)[:50]))
    with pytest.raises(SystemExit, match="answer different commands"):
        pipeline.changes(before, fewer)


def test_gpu_agents_keep_packs_each_finished_adapter_in_float16(tiny_llama_dir, tmp_path):
    # gpu_agents.sh keep: the trained adapters leave a time-limited GPU machine as OUT/NAME.tgz, weights in
    # float16 and no checkpoints, each unpacking into a directory that loads as the run did; a run not
    # finished (no record) is left where it is
    import os
    import shutil
    import subprocess
    import sys
    import tarfile

    from safetensors.torch import load_file

    work, results = tmp_path / "work", tmp_path / "results"
    results.mkdir()
    (work / "out").mkdir(parents=True)
    sft_out = sft_adapter(tiny_llama_dir, work / "out")
    finished = work / "grid" / "g1" / "grpo"
    shutil.copytree(sft_out, finished)
    assert any(finished.glob("checkpoint-*"))  # the run's own, left out of what is kept
    unfinished = work / "grid" / "g2" / "grpo"
    shutil.copytree(sft_out, unfinished)
    (unfinished / "tuneforge_run.json").unlink()
    script = Path(__file__).resolve().parents[1] / "gpu_agents.sh"
    env = {**os.environ, "AGENTS_WORK": str(work), "AGENTS_SITE": str(tmp_path / "site"), "OUT": str(results),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(script), "keep"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in results.iterdir()) == ["g1-grpo.tgz", "sft.tgz"]
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        original = load_for_inference(str(sft_out)).model(ids).logits
    full = load_file(sft_out / "adapter_model.safetensors")
    for name in ("sft", "g1-grpo"):
        with tarfile.open(results / f"{name}.tgz") as archive:
            assert not any("checkpoint-" in member for member in archive.getnames())
            archive.extractall(tmp_path / "back", filter="data")
        kept = load_file(tmp_path / "back" / name / "adapter_model.safetensors")
        assert kept.keys() == full.keys()
        assert all(kept[k].dtype == torch.float16 and torch.equal(kept[k], full[k].half()) for k in full)
        with torch.no_grad():
            logits = load_for_inference(str(tmp_path / "back" / name)).model(ids).logits
        assert torch.allclose(logits, original, atol=1e-3)
