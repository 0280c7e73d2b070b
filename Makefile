# The two commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch wheels: override e.g. TORCH_SPEC="torch torchvision" on other platforms.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.densessl-installed

.PHONY: demo test bench install clean

$(STAMP): setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --out demo_out --overwrite

# spatial-correlation-sampler built for the CPU (benchmarks/build_correlation_package.sh), so that
# the parity tests run; when it cannot be built they are skipped, saying why.
SCS_SITE := .scs_site

$(SCS_SITE): | $(STAMP)
	bash benchmarks/build_correlation_package.sh $(SCS_SITE) || \
		echo "spatial-correlation-sampler was not built: the parity tests will be skipped"

test: $(STAMP) | $(SCS_SITE)
	PYTHONPATH=$(SCS_SITE) $(PY) -m pytest -q -n 2 --durations=15

bench: $(STAMP)
	$(PY) benchmarks/bench_scorer.py
	$(PY) benchmarks/bench_synthetic.py
	$(PY) benchmarks/bench_propagation.py
	$(PY) benchmarks/bench_correlation.py
	$(PY) benchmarks/bench_crw.py
	$(PY) benchmarks/bench_flow.py
	$(PY) benchmarks/bench_motion_vos.py
	$(PY) benchmarks/bench_crf.py

clean:
	rm -rf $(VENV) demo_out runs $(SCS_SITE)
