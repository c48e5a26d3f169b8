# Set-up and everyday commands. Everything installs into $(VENV); nothing global.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of this torch lies on the project's machines; an unpinned torch
# pulls a multi-GB CUDA build. Override on a GPU host, e.g. TORCH=torch.
TORCH ?= torch==2.13.0

.PHONY: serve install dev system-deps test lint protos docs bench-encode clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/.installed
$(VENV)/.installed: $(BIN)/python pyproject.toml client/pyproject.toml server/pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e . -e ./client -e ./server
	touch $@

dev: $(VENV)/.dev
$(VENV)/.dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

# Start the service on embedded defaults: 127.0.0.1:50051, bundled public pool, CUDA if present.
serve: install
	$(BIN)/instahide-server

# Debian's prometheus package (prometheus + promtool) for the real-scrape tests (tests/test_prometheus.py).
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else echo "install Debian's prometheus package (prometheus, promtool) for tests/test_prometheus.py"; fi; }

test: dev system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -rs

lint: dev
	$(BIN)/ruff check .
	$(BIN)/buf lint

# Regenerate the committed stubs after changing protos/ (tests fail when they drift).
protos: dev
	$(BIN)/python client/tools/generate_stubs.py

# Regenerate the settings table of docs/operations.md from server/instahide_server/settings.py (a test checks it).
docs: install
	$(BIN)/python -c "import pathlib, re; from instahide_server.settings import markdown_table; \
	p = pathlib.Path('docs/operations.md'); t = p.read_text(); \
	b = t.index('\n', t.index('<!-- settings:begin')) + 1; e = t.index('<!-- settings:end -->'); \
	p.write_text(t[:b] + markdown_table() + t[e:])"

bench-encode: install
	$(BIN)/python bench/encode.py

clean:
	rm -rf $(VENV) build *.egg-info */*.egg-info
