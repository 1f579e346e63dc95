"""Red team SmolLM2-135M-Instruct: every template attack (and the direct request) on a seeded sample
of held-out harmful behaviours (refusal_direction harmful_test: StrongREJECT, JailbreakBench,
HarmBench), judged by refusal phrases. Add "gcg" to attacks for the optimised suffix (slow on CPU:
about a minute per behaviour at these settings), "pair" for prompts an attacker model writes and
refines from the target's answers (arXiv:2310.08419; n_streams x n_iterations target queries per
behaviour; the attacker is the attacked model unless pair.attacker_model names a registered one)."""

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
    c.pair = ml_collections.ConfigDict({"n_streams": 8, "n_iterations": 3, "max_attack_tokens": 128,
                                        "max_target_tokens": 64, "temperature": 1.0, "seed": 0,
                                        "judge": "refusal_phrases", "attacker_model": None})
    c.judge = "refusal_phrases"
    c.judge_options = ml_collections.ConfigDict()  # response_classifier: {"path": ...}
    c.max_new_tokens = 64
    c.batch_size = 32
    return c
