"""Sample completions from a model on the command line.

    python -m align_jax.generate --model=smollm2-135m-instruct --prompt="What is the capital of France?"
    python -m align_jax.generate --prompts_jsonl=prompts.jsonl --n=4 --temperature=0.8 --top_p=0.95 \
        --output_jsonl=out.jsonl

A JSONL line is ``{"prompt": "..."}`` or ``{"messages": [{"role": ..., "content": ...}, ...]}``.
With ``--chat_template`` (default) a plain prompt becomes one user message rendered with the
model's chat format. Output lines: prompt index, sample index, completion text, token ids,
sum of sampling and of model log-probs, and why it stopped.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

flags.DEFINE_string("model", "smollm2-135m-instruct", "registered model name")
flags.DEFINE_string("model_path", None, "Hugging Face folder or .gguf file (instead of --model)")
flags.DEFINE_multi_string("prompt", [], "a prompt (repeatable)")
flags.DEFINE_string("prompts_jsonl", None, "JSONL file of prompts")
flags.DEFINE_bool("chat_template", True, "render prompts with the model's chat format")
flags.DEFINE_float("temperature", 0.0, "0 = greedy")
flags.DEFINE_integer("top_k", 0, "0 = off")
flags.DEFINE_float("top_p", 1.0, "1 = off")
flags.DEFINE_float("min_p", 0.0, "0 = off")
flags.DEFINE_integer("n", 1, "samples per prompt")
flags.DEFINE_integer("max_new_tokens", 128, "completion length cap")
flags.DEFINE_multi_string("stop", [], "stop string (tokenized, repeatable)")
flags.DEFINE_integer("seed", 0, "PRNG seed")
flags.DEFINE_string("output_jsonl", None, "write results here instead of printing")
FLAGS = flags.FLAGS


def read_requests(prompts: list[str], jsonl: str | None) -> list[dict]:
    requests = [{"prompt": p} for p in prompts]
    if jsonl:
        with open(jsonl) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or not ({"prompt", "messages"} & set(row)):
                    raise ValueError(f"{jsonl}:{line_no}: expected an object with 'prompt' or 'messages'")
                requests.append(row)
    if not requests:
        raise ValueError("no prompts: pass --prompt and/or --prompts_jsonl")
    return requests


def encode_requests(requests: list[dict], tokenizer, template: str | None, use_chat: bool) -> list[list[int]]:
    from align_jax.models.chat import encode_chat

    ids = []
    for i, r in enumerate(requests):
        if use_chat:
            if template is None:
                raise ValueError("this model has no chat format; pass --chat_template=false")
            messages = r.get("messages") or [{"role": "user", "content": r["prompt"]}]
            ids.append(encode_chat(tokenizer, messages, template=template, add_generation_prompt=True).ids)
        else:
            if "prompt" not in r:
                raise ValueError(f"request {i} has 'messages' but --chat_template=false")
            ids.append(tokenizer.encode(r["prompt"], add_special_tokens=True))
        if not r.get("messages") and not r.get("prompt"):
            raise ValueError(f"request {i} is an empty prompt")
    return ids


def main(argv):
    del argv
    import numpy as np

    from align_jax.models.registry import load_model
    from align_jax.sampling import SamplingParams, sample

    requests = read_requests(FLAGS.prompt, FLAGS.prompts_jsonl)
    loaded = load_model(None, FLAGS.model_path) if FLAGS.model_path else load_model(FLAGS.model)
    tok = loaded.tokenizer
    stops = tuple(tuple(tok.encode(s)) for s in FLAGS.stop)
    params = SamplingParams(
        temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p, min_p=FLAGS.min_p,
        n=FLAGS.n, max_new_tokens=FLAGS.max_new_tokens, stop_sequences=stops, seed=FLAGS.seed,
    )
    prompts = encode_requests(requests, tok, loaded.chat_template, FLAGS.chat_template)
    out = sample(loaded.model, prompts, params, eos_ids=sorted(tok.eos_ids), pad_id=tok.pad_id or 0)
    tokens, mask = np.asarray(out.tokens), np.asarray(out.completion_mask)
    samp, model_lp = np.asarray(out.sampling_logprobs), np.asarray(out.model_logprobs)
    sink = open(FLAGS.output_jsonl, "w") if FLAGS.output_jsonl else None
    for row in range(tokens.shape[0]):
        ids = tokens[row, : mask[row].sum()].tolist()
        reason = "eos" if ids and ids[-1] in tok.eos_ids else "length" if len(ids) == params.max_new_tokens else "stop"
        rec = dict(prompt_index=row // params.n, sample_index=row % params.n,
                   completion=tok.decode(ids, skip_special_tokens=True), token_ids=ids,
                   sampling_logprob=float(samp[row].sum()), model_logprob=float(model_lp[row].sum()),
                   finish_reason=reason)
        if sink:
            sink.write(json.dumps(rec) + "\n")
        else:
            print(f"--- prompt {rec['prompt_index']} sample {rec['sample_index']} ({reason}) ---\n{rec['completion']}")
    if sink:
        sink.close()
        print(f"wrote {tokens.shape[0]} completions to {FLAGS.output_jsonl}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
