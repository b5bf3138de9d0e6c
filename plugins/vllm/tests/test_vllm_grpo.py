"""GRPO sampled by the vllm engine (the dpo plugin's --rollout-engine vllm), on vLLM's CPU build.

vLLM holds its own copy of the model, so the policy's weights must reach it: the engine's
``load_weights`` is checked against a transformers forward of the weights it was given, and
a tiny LoRA policy trains for two real GRPO steps (trl's trainer, tuneforge's rollouts),
after which vLLM serves the trained policy (adapter merged), not the starting weights.
One vLLM engine (float32, so that its log-probabilities match transformers' closely) serves
both tests, started as the run starts it, before the policy loads.
"""

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; the README's test command runs these tests in .venv-vllm")
pytest.importorskip("trl", reason="trl is not installed here; the README's test command installs the dpo plugin in .venv-vllm")

import torch

from tuneforge.api import ChatRequest, Converted, SamplingParams, TuneforgeError, prompt_ids, resolve_bundle
from tuneforge.testing import plugin_installed

STEPS = 2


@pytest.fixture(scope="module")
def run(vllm_tiny_dir):
    """What GRPO's prepare_data leaves for the trainer: the prompts encoded by the run's template, and vLLM started."""
    from types import SimpleNamespace

    import tuneforge_dpo.plugin
    import tuneforge_vllm.plugin
    from tuneforge_dpo import grpo
    from tuneforge_dpo.prompts import convert_prompt, encode_prompts, split_prompt

    with plugin_installed(tuneforge_dpo.plugin, "dpo", "tuneforge-dpo", also=[(tuneforge_vllm.plugin, "vllm", "tuneforge-vllm")]):
        bundle = resolve_bundle(vllm_tiny_dir)
        rows = [{"prompt": f"Say a word about the number {i}.", "answer": str(i)} for i in range(4)]
        examples = [Converted(split_prompt(convert_prompt(row)), f"row {i}", "rows", "prompt") for i, row in enumerate(rows, 1)]
        samples, _ = encode_prompts(examples, bundle.template, max_length=256, completion_length=8, truncation="right")
        config = SimpleNamespace(
            rollout_engine="vllm", rollout_engine_option=["max_model_len=512", "enforce_eager=true"], template=None,
            temperature=1.0, max_completion_length=8, per_device_batch_size=4, gradient_accumulation_steps=1,
        )
        ctx = SimpleNamespace(config=config, setup=SimpleNamespace(dtype_name="float32"), bundle=bundle,
                              template=bundle.template, tokenizer=bundle.tokenizer, train_dataset=samples, state={})
        ctx.state["rollout_engine"] = grpo.start_rollout_engine(ctx)
        try:
            yield ctx
        finally:
            ctx.state["rollout_engine"].close()


def _logprobs(model, ids: list[int], answer: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + answer])).logits[0].float().log_softmax(-1)
    return torch.stack([logits[len(ids) - 1 + i, token] for i, token in enumerate(answer)])


def _served(engine, messages: list[dict], max_tokens: int = 8):
    """The engine's greedy answer to ``messages``: its prompt ids, answer ids (up to a stop token) and their logprobs."""
    request = ChatRequest(messages, sampling=SamplingParams(max_tokens=max_tokens, logprobs=True))
    [[answer]] = engine.generate([request])
    logprobs = torch.tensor([entry["logprob"] for entry in answer.logprobs])
    return prompt_ids(engine.template, engine.tokenizer, request), answer.token_ids[: len(logprobs)], logprobs


def test_load_weights_serves_every_weight_given(run, vllm_tiny_dir):
    """Every weight changed, the embeddings too, which this model ties to its output head (of which vLLM's CPU
    build multiplies with a copy packed at load time); then the original weights back."""
    from transformers import AutoModelForCausalLM

    engine = run.state["rollout_engine"]
    changed = AutoModelForCausalLM.from_pretrained(vllm_tiny_dir, dtype=torch.float32)
    original = [(name, parameter.detach().clone()) for name, parameter in changed.named_parameters()]
    messages = [{"role": "user", "content": "What is two plus two?"}]
    ids, before, before_logprobs = _served(engine, messages)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    with pytest.raises(TuneforgeError, match="was given twice to load_weights; give each weight once"):
        engine.load_weights([original[0], original[0]])
    try:
        assert engine.load_weights(changed.named_parameters()) == len(original)
        _, after, served = _served(engine, messages)
    finally:
        engine.load_weights(original)
    assert after != before
    assert (served - _logprobs(changed, ids, after)).abs().max() < 1e-3
    _, again, again_logprobs = _served(engine, messages)
    assert again == before and (again_logprobs - before_logprobs).abs().max() < 1e-4


def test_grpo_samples_from_the_policys_weights_synced_once_a_step(run, vllm_tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from tuneforge_dpo import grpo
    from tuneforge_dpo.grpo_trainer import GRPOConfig, TuneforgeGRPOTrainer

    samples, tokenizer, template = run.train_dataset, run.tokenizer, run.template
    rollouts = grpo.engine_rollouts(run)  # over the engine started before the policy loads
    model = AutoModelForCausalLM.from_pretrained(vllm_tiny_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    texts = [tokenizer.decode(sample["prompt_ids"]) for sample in samples]

    def length(completions, **kwargs):  # a random model's answers differ in length: every group has a signal
        return [float(len(completion)) for completion in completions]

    trainer = TuneforgeGRPOTrainer(
        model=model,
        reward_funcs=[length],
        args=GRPOConfig(
            output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, num_generations=2,
            max_completion_length=8, learning_rate=5e-2, beta=0.0, temperature=1.0, logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=True, bf16=False,  # trl's default is bf16 autocast, on a CPU too
            disable_dropout=True, log_completions=False, label_names=[],
        ),
        train_dataset=grpo._dataset([{"prompt": text, "row": sample["row"]} for text, sample in zip(texts, samples)]),
        processing_class=tokenizer,
        prompt_ids={text: sample["prompt_ids"] for text, sample in zip(texts, samples)},
        stop_token_ids=template.stop_token_ids,
        rollouts=rollouts,
    )
    trainer.train()
    assert trainer.state.global_step == STEPS
    assert rollouts.syncs == STEPS  # before each step's sampling, not per micro-batch
    assert 2 * 4 <= rollouts.tokens <= STEPS * 4 * 8

    # The trainer's order: two answers to each prompt, each ending at a stop token unless cut at 8 tokens.
    first, second = (sample["prompt_ids"] for sample in samples[:2])
    answers = rollouts.sample(trainer.model, [first, first, second, second], step=trainer.state.global_step)
    assert rollouts.syncs == STEPS + 1  # the last step's weights
    assert len(answers) == 4 and all(1 <= len(answer) <= 8 for answer in answers)
    stops = set(template.stop_token_ids)
    assert all(answer[-1] in stops for answer in answers if len(answer) < 8)
    assert all(token not in stops for answer in answers for token in answer[:-1])
    rollouts.sample(trainer.model, [first, first], step=trainer.state.global_step)
    assert rollouts.syncs == STEPS + 1  # the same step: no second sync

    # What vLLM serves now is the trained policy (its adapter merged), not the starting weights.
    ids, tokens, served = _served(rollouts.engine, json.loads(samples[0]["conversation"])["messages"])
    assert ids == list(first)
    policy = trainer.model.eval()
    trained = _logprobs(policy, ids, tokens)
    with policy.disable_adapter():
        untrained = _logprobs(policy, ids, tokens)
    assert (served - trained).abs().max() < 1e-3, (served, trained)
    assert (served - untrained).abs().max() > 1e-2, (served, untrained)  # the steps moved the policy
