# bigtrain: `make demo` and `make test` are the two commands; both set up the environment first when needed.
SHELL := /bin/bash
PYTHON ?= python3
# STACK=current (default): Spark 4, pyarrow 26, numpy 2 (requirements/runtime.txt), in .venv.
# STACK=spark35: the previous stack for clusters still on Spark 3.5 (requirements/spark35.txt), in .venv-spark35.
STACK ?= current
ifeq ($(STACK),current)
RUNTIME := requirements/runtime.txt
VENV ?= .venv
else ifeq ($(STACK),spark35)
RUNTIME := requirements/spark35.txt
VENV ?= .venv-spark35
else
$(error STACK=$(STACK): choose STACK=current (Spark 4, the default) or STACK=spark35 (Spark 3.5))
endif
VPY := $(VENV)/bin/python
# Horovod's wheel, built once per machine (by scripts/build_horovod.sh, keyed by Horovod version, build kind, torch
# and Python) and shared by every checkout and venv here, as pip shares its own wheel cache: a fresh clone or a new
# venv installs it in seconds instead of compiling for 2-3 minutes. WHEELS=DIR moves it.
WHEELS ?= $(HOME)/.cache/bigtrain/wheels
STAMP := $(VENV)/.bigtrain-setup
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=
# Local runs: Spark binds to loopback (not the first network interface it finds) and logs warnings only.
export SPARK_LOCAL_IP ?= 127.0.0.1
export SPARK_SUBMIT_OPTS ?= -Dlog4j2.configurationFile=file:$(CURDIR)/conf/log4j2.properties

.PHONY: setup demo demo-images demo-text lint test test-slow test-fast test-legacy test-other-pythons bench bench-text dist clean help gpu-check gpu-check-data
BENCH_ARGS ?= --size quick

help:
	@echo "make setup      create $(VENV) and install the pinned stack (Horovod built once, cached in $(WHEELS))"
	@echo "                STACK=spark35: the previous stack (Spark 3.5, pyarrow 14, numpy 1) in .venv-spark35"
	@echo "make demo       images and texts: sample data -> spark-submit preprocessing -> horovodrun -np 2 -> test metrics"
	@echo "make demo-images / make demo-text   one of the two"
	@echo "make test       the test suite on the current stack but the slow tests (CI: then test-slow, test-legacy,"
	@echo "                test-other-pythons)"
	@echo "make test-slow  whole jobs and scripts end to end: standalone cluster, locales, nightly pipeline, bench and"
	@echo "                GPU-check smoke runs"
	@echo "make test-fast  tests that need neither Spark nor horovodrun"
	@echo "make lint       ruff (rules in pyproject.toml); CI runs it first"
	@echo "make test-legacy        the subset CI runs on STACK=spark35, and each stack reading the other's datasets"
	@echo "                        (sets .venv-spark35 and .venv up)"
	@echo "make test-other-pythons the fast suite and a horovodrun training on every other CPython 3.11-3.13 found"
	@echo "                        (.venv-pyXY each)"
	@echo "make dist       dist/bigtrain-src.zip, the code spark-submit --py-files ships to a cluster"
	@echo "make bench      benchmarks (BENCH_ARGS='--size 4' to scale up); table on stdout, JSON in runs/bench/"
	@echo "make bench-text the text models and their baselines on a real-text set (installed packages' docstrings)"
	@echo "make gpu-check-data   small image and text datasets + offline wheels for a GPU host, in .cache/gpu_check (< 60 MiB)"
	@echo "make gpu-check  on a GPU host (no venv, Java or Spark needed): CNN and LSTM with single/torchrun/horovodrun,"
	@echo "                table + verdict in runs/gpu_check (GPU_CHECK_ARGS='--out DIR ...'; scripts/gpu_check.sh --help)"

setup: $(STAMP)

$(STAMP): pyproject.toml $(RUNTIME) requirements/petastorm.txt requirements/dev.txt scripts/build_horovod.sh scripts/horovod_build_env.py \
		compat/petastorm_hook.py
	@bash scripts/check_java.sh $(STACK)
	@$(PYTHON) scripts/check_python.py $(STACK)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r $(RUNTIME) -r requirements/dev.txt
	$(VPY) -m pip install -q --no-deps -r requirements/petastorm.txt
	wheel=$$(bash scripts/build_horovod.sh $(VPY) $(WHEELS)) && $(VPY) -m pip install -q "$$wheel"
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
# The hook (a .pth in site-packages): a plain `import petastorm` in this venv applies compat/petastorm.py first.
	$(VPY) -m compat.petastorm_hook
	$(VPY) -c 'import sys, horovod.torch, petastorm, pyarrow, pyspark, torch; getattr(petastorm, "_bigtrain_compat", False) or sys.exit("import petastorm did not apply compat.petastorm: the hook (compat/petastorm_hook.py) is missing"); print("stack ok ($(STACK)): python", sys.version.split()[0], "torch", torch.__version__, "pyspark", pyspark.__version__, "pyarrow", pyarrow.__version__, "petastorm", petastorm.__version__)'
	@touch $(STAMP)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh $(DEMO_DIR) all

demo-images: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh $(DEMO_DIR) images

demo-text: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh $(DEMO_DIR) texts

lint: setup
	$(VENV)/bin/ruff check --no-cache .

# Every test of one stack but the slow ones (whole jobs and scripts end to end: test-slow); the tests marked
# `stacks` need both stacks set up and run in test-legacy.
test: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) -m pytest -m "not stacks and not slow" $(PYTEST_ARGS)

test-slow: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) -m pytest -m "slow and not stacks" $(PYTEST_ARGS)

test-fast: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) -m pytest -m "not spark and not horovod and not slow" $(PYTEST_ARGS)

# The previous stack (STACK=spark35, .venv-spark35): the compatibility tests (its fixture read back, and datasets of
# each stack read by the other's Petastorm), both preprocessing jobs, the loader, training without pyspark, and one
# horovodrun training. Then, on the current stack, the other direction: its datasets read by spark35's Petastorm.
LEGACY_TESTS ?= tests/compat tests/jobs/test_preprocess_images.py tests/jobs/test_preprocess_sequences.py \
	tests/training/test_data.py tests/training/test_no_spark.py tests/jobs/test_spark_passes.py \
	"tests/training/test_horovod.py::test_train_job_under_horovodrun_logs_once_and_writes_outputs"
test-legacy:
	$(MAKE) setup STACK=spark35
	$(MAKE) setup STACK=current
	PATH="$(CURDIR)/.venv-spark35/bin:$$PATH" .venv-spark35/bin/python -m pytest $(LEGACY_TESTS) $(PYTEST_ARGS)
	PATH="$(CURDIR)/.venv/bin:$$PATH" .venv/bin/python -m pytest -m stacks tests/compat $(PYTEST_ARGS)

# The current stack on every other CPython 3.11-3.13 this machine offers (scripts/other_pythons.sh), each in
# .venv-pyXY, with the fast suite and one horovodrun training (the Horovod built for that Python, Gloo). Horovod is
# built for CPU there (no GPU on a CI machine, even where nvcc is).
OTHER_PYTHON_TESTS ?= "tests/training/test_horovod.py::test_train_job_under_horovodrun_logs_once_and_writes_outputs"
test-other-pythons:
	@found=$$(bash scripts/other_pythons.sh $(PYTHON)); \
	if [[ -z $$found ]]; then echo "test-other-pythons: this machine offers no other CPython 3.11-3.13: none tested"; fi; \
	for py in $$found; do \
	  tag=$$($$py -c 'import sys; print("py%d%d" % sys.version_info[:2])'); \
	  echo "test-other-pythons: $$py ($$($$py --version)) in .venv-$$tag"; \
	  BIGTRAIN_HOROVOD_GPU=0 $(MAKE) test-fast PYTHON=$$py VENV=.venv-$$tag || exit 1; \
	  PATH="$(CURDIR)/.venv-$$tag/bin:$$PATH" .venv-$$tag/bin/python -m pytest $(OTHER_PYTHON_TESTS) $(PYTEST_ARGS) \
	    || exit 1; \
	done

bench: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) -m benchmarks.run $(BENCH_ARGS)

bench-text: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) -m benchmarks.text_models $(BENCH_TEXT_ARGS)

dist: setup
	$(VPY) scripts/make_dist.py dist/bigtrain-src.zip

gpu-check-data: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/gpu_check_data.sh

# No setup: a GPU host has no venv; where this checkout has one (a CPU host), its python3 comes first on PATH.
gpu-check:
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs dist .pytest_cache
