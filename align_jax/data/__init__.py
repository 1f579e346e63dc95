"""Data layer: sources -> records -> tokenize -> pad/pack -> grain batches.

* :mod:`records`: record kinds (SFT, preference, ranked, unpaired, prompt) and row parsing.
* :mod:`sources`: JSONL / gzip JSONL / JSON / CSV / Parquet files -> records, errors by line.
* :mod:`hh_rlhf`: Anthropic HH transcripts -> preference records.
* :mod:`tokenization`: records -> fixed-length token arrays with a truncation policy.
* :mod:`packing`: padding and first-fit packing with segment ids / positions.
* :mod:`pipeline`: the one pipeline: a source's records -> tokenized examples -> this host's slices of
  seeded global batches (grain, resumable state); the training engine reads its data through it.
* :mod:`tfds_builders`: the project's datasets (HH-RLHF, IFEval, TruthfulQA, refusal prompts) as
  registered tfds builders over local files, read back from array_record without TensorFlow.

Submodules are imported on use (``from align_jax.data import sources``) so that importing the
package does not pull in tensorflow-datasets.
"""
