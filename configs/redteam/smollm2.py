"""Red team SmolLM2-135M-Instruct: every template attack (and the direct request) on a seeded sample
of held-out harmful behaviours (refusal_direction harmful_test: StrongREJECT, JailbreakBench,
HarmBench), judged by refusal phrases. Add "gcg" to attacks for the optimised suffix (slow on CPU:
about a minute per behaviour at these settings)."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "smollm2-135m-instruct", "path": None})
    c.data_path = "../shared/data/refusal_direction/harmful_test.json"
    c.limit = 100  # behaviours (0 = all 572)
    c.seed = 0
    c.attacks = ("direct", "prefix_injection", "refusal_suppression", "persona_novelist", "persona_unfiltered",
                 "hypothetical", "few_shot_compliance", "payload_split", "base64", "rot13", "leetspeak")
    c.gcg = ml_collections.ConfigDict({"num_steps": 50, "search_width": 128, "topk": 256, "batch_size": 128, "seed": 0})
    c.judge = "refusal_phrases"
    c.judge_options = ml_collections.ConfigDict()  # response_classifier: {"path": ...}
    c.max_new_tokens = 64
    c.batch_size = 32
    return c
