"""Data layer: sources -> records -> tokenize -> pad/pack -> grain batches.

* :mod:`records`: record kinds (SFT, preference, ranked, unpaired, prompt) and row parsing.
* :mod:`sources`: JSONL / gzip JSONL / JSON / CSV / Parquet files -> records, errors by line.
* :mod:`hh_rlhf`: Anthropic HH transcripts -> preference records.
* :mod:`tokenization`: records -> fixed-length token arrays with a truncation policy.
* :mod:`packing`: padding and first-fit packing with segment ids / positions.
* :mod:`pipeline`: grain pipeline (shuffle, tokenize, pad/pack, global batch, host rows, resumable state).
* :mod:`tfds_builders`: tfds array_record builders over local files (no TensorFlow).

Submodules are imported on use (``from align_jax.data import sources``) so that importing the
package does not pull in tensorflow-datasets.
"""
