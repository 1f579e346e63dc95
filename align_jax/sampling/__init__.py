"""KV-cache sampling: tokens plus per-token log-probs under the sampling and the raw model distributions."""

from align_jax.sampling.decoding import SamplingParams, choose_tokens, sampling_logprobs
from align_jax.sampling.sampler import SampleOutput, pad_prompts, sample

__all__ = ["SampleOutput", "SamplingParams", "choose_tokens", "pad_prompts", "sample", "sampling_logprobs"]
