"""Load GGUF files in llama.cpp and report what it computes: run by ``.venv-llamacpp``'s python.

``python tests/llamacpp_probe.py JOBS.json RESULT.json``: JOBS.json is a list of
``{"path", "ids", "text", "messages", "generate", "logits"}``; for each file this loads it
with llama-cpp-python (llama.cpp's CPU build), evaluates ``ids`` and saves the logits of
every position to ``logits`` (a ``.npy`` file), tokenizes ``text`` (special tokens parsed,
no BOS added), renders ``messages`` with the chat template llama-cpp-python takes from the
file's metadata (its ``Jinja2ChatFormatter``, what ``create_chat_completion`` uses),
tokenizes that prompt and generates ``generate`` tokens greedily from it (temperature 0, no
penalties, no stop). RESULT.json gets one record per job: those tokens, the rendered
prompt and the file's metadata as llama.cpp reads it. It imports nothing from tuneforge:
the environment holds only llama-cpp-python and its dependencies.
"""

import json
import sys

import numpy as np
from llama_cpp import Llama, llama_chat_format


def probe(job: dict) -> dict:
    llm = Llama(job["path"], n_ctx=256, n_batch=256, n_threads=1, logits_all=True, verbose=False, seed=0)
    try:
        llm.eval(job["ids"])
        np.save(job["logits"], np.asarray(llm.scores[: len(job["ids"])], dtype=np.float32))
        tokens = llm.tokenize(job["text"].encode(), add_bos=False, special=True)

        metadata = dict(llm.metadata)
        eos, bos = llm.token_eos(), llm.token_bos()
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=metadata["tokenizer.chat_template"],
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        )
        prompt = formatter(messages=job["messages"]).prompt
        prompt_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        generated = []
        llm.reset()
        for token in llm.generate(prompt_ids, temp=0.0, repeat_penalty=1.0, reset=True):
            generated.append(int(token))
            if len(generated) == job["generate"]:
                break
        return {
            "tokens": tokens, "prompt": prompt, "prompt_ids": prompt_ids, "generated": generated,
            "metadata": metadata, "n_vocab": llm.n_vocab(), "chat_format": llm.chat_format,
        }
    finally:
        llm.close()


def main(jobs_path: str, result_path: str) -> None:
    with open(jobs_path) as f:
        jobs = json.load(f)
    results = [probe(job) for job in jobs]
    with open(result_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
