"""Keys every eval suite reads; ``<suite>.py`` adds its own. Run with align_jax.evaluate."""

import ml_collections


def base_config(suite: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.suite = suite  # a name in align_jax.evals.suites.SUITES
    # model.path (Hugging Face folder or .gguf) wins over model.name when set.
    c.model = dict(name="smollm2-135m-instruct", path="", param_dtype="float32", dtype="float32")
    c.limit = 0  # first N examples (0 = all)
    c.batch_size = 16  # rows per compiled generation / scoring batch
    c.seed = 0  # data shuffling / generation seed and bootstrap seed
    c.n_resamples = 1000  # bootstrap resamples for the 95% CIs
    return c
