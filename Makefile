# Everything the project needs is installed from here: `make demo` and `make test` work on a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
EXTRAS  := models,images,torchvision,runtime,peers,dev

.PHONY: install demo test test-isa test-slow bench docs clean data

install: $(STAMP) data

# torch is installed first and every install is held to constraints.txt: the CPU wheel lies on
# disk, while an unpinned torch (or a newer torchvision) would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py constraints.txt src/actzip/runtime/kernels.c src/actzip/codecs/kernels.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt torch
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

# Fashion-MNIST comes from Debian. Without root or apt-get it is skipped with one line (the tests
# that need it skip too, saying why); nothing else depends on it.
data:
	@if [ -f $(FMNIST) ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "make data: no apt-get here; skipping Fashion-MNIST"; \
	elif [ "$$(id -u)" != 0 ]; then echo "make data: Fashion-MNIST needs root to install (apt-get); skipping it"; \
	else apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
		|| echo "make data: apt-get could not install dataset-fashion-mnist; skipping it"; fi

demo: install
	$(BIN)/actzip analyze --model efficientnet-lite0 --bits 8,16 --out runs/demo

test: install
	$(BIN)/python -m pytest -q

# The suite again with PyTorch's kernels held to plain C++ and to AVX2: float results that hold only
# on one CPU's instruction set fail here rather than on a user's machine.
test-isa: install
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q -p no:cacheprovider
	ATEN_CPU_CAPABILITY=avx2 $(BIN)/python -m pytest -q -p no:cacheprovider

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python benchmarks/analyze_speed.py

# The results pages from the benchmarks' JSON, then the site (in site/) from docs/.
docs: install
	$(BIN)/python benchmarks/pages.py
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache site
