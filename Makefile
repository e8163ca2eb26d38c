# Two entry points on a fresh machine: `make benchmark` (the CPU default benchmark) and `make test`.
# Both install what they need: Debian's libraries for FFCV (when root), then .venv at the repository root.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
# The embedded default data set, the CPU proxy's: synth's defaults (16 classes, 80 training and 60 validation
# images each, long side 112 px: ImageNet's images at a quarter of the side; see resnet/data/synth.py).
SYNTH_ARGS := --seed 0
SYNTH_DIR := data/proxy-synth
FFCV_DIR := data/proxy-ffcv
STAMP := $(shell date +%Y%m%d-%H%M%S)

.PHONY: benchmark test setup system-libs clean-data

setup: .venv/.installed

system-libs:
	@if pkg-config --exists libturbojpeg opencv4 2>/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			libturbojpeg0-dev libopencv-dev pkg-config >/dev/null; \
	else \
		echo "error: FFCV needs Debian's libturbojpeg0-dev, libopencv-dev and pkg-config; run as root:" \
		     "sudo apt-get install libturbojpeg0-dev libopencv-dev pkg-config" >&2; exit 1; \
	fi

.venv/.installed: pyproject.toml | system-libs
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[ffcv,dali,dev]'
	touch $@

# Order-only on the venv: a reinstall (a pyproject.toml change) keeps the data made (`make clean-data` remakes it).
$(SYNTH_DIR)/.done: | .venv/.installed
	.venv/bin/mlperf-resnet synth $(SYNTH_DIR) $(SYNTH_ARGS)
	touch $@

$(FFCV_DIR)/.done: $(SYNTH_DIR)/.done
	.venv/bin/mlperf-resnet prepare $(SYNTH_DIR) $(FFCV_DIR)
	touch $@

# The main job: five seeds of the CPU-sized Mild recipe on the synthetic set, each log checked, then the summary.
benchmark: $(FFCV_DIR)/.done
	source ./config_CPU.sh && PATH=$(CURDIR)/.venv/bin:$$PATH LOGDIR=results/cpu-$(STAMP) ./run_and_time.sh

# Two pytest-xdist workers, CI's two cores (TEST_WORKERS=0: one process; TEST_WORKERS=auto: one per core). A module's
# tests stay on one worker, the slowest modules start first, session data is built once (tests/conftest.py); the
# slowest tests are listed at the end (what to make cheaper next).
TEST_WORKERS ?= 2
test: .venv/.installed
	.venv/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

clean-data:
	rm -rf data
