# Set-up and the two entry points of the README: `make demo` and `make test`.
# Both create .venv and install the project into it first; nothing else is needed.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

# The target first: --configfile takes every word after it.
SNAKEMAKE_DEMO := snakemake report --cores 2 --configfile config/demo.yaml --replace-workflow-config

.PHONY: install demo screenshot test lint system-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e . --group dev
	touch $@

install: $(VENV)/.installed

# The whole DAG on the built-in digits dataset, on the CPU; ends in results/report/index.html.
demo: install
	$(SNAKEMAKE_DEMO)
	@echo "Report: $(CURDIR)/results/report/index.html"

# The README's picture, taken from the demo's own report (needs `make system-deps`).
screenshot: demo
	python docs/screenshot.py results/report/index.html docs/report.png

# System packages some tests drive (a browser for the report page; a one-node SLURM cluster for
# the cluster profile). Installed when running as root with apt (CI, fresh machines); elsewhere
# those tests say what to install.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  for p in chromium chromium-driver slurm-wlm munge; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi

lint: install
	ruff check .
	ruff format --check .
	snakefmt --check Snakefile workflow/rules

test: install system-deps lint
	pytest

clean:
	rm -rf results logs .snakemake
