# Everything the project needs is installed from here: `make demo` and `make test` work on a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
EXTRAS  := models,images,torchvision,dev

.PHONY: install demo test test-slow bench clean data

install: $(STAMP) data

# torch is pinned and installed first: the CPU wheel lies on disk, while any unpinned
# torch requirement would pull a multi-GB CUDA build from the registry.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
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
