# Everything the project needs is installed from here: `make demo` and `make test` work on a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
EXTRAS  := models,images,torchvision,dev

.PHONY: install demo test test-slow bench clean data

install: $(STAMP) data

# torch is installed first and every install is held to constraints.txt: the CPU wheel lies on
# disk, while an unpinned torch (or a newer torchvision) would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt torch
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

# Fashion-MNIST comes from Debian; skipped quietly where apt-get is missing (tests then skip too).
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	fi

demo: install
	$(BIN)/actzip analyze --model efficientnet-lite0 --bits 8,16 --out runs/demo

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python benchmarks/analyze_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
