# Two commands on a fresh machine:  `make run` (set up + start the app)  and  `make test` (set up + run the tests).
# A second run reuses .venv: the install step only repeats when a requirements file changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: run test lint bench clean

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(PY) app.py $(ARGS)

# The browser tests drive Debian's chromium (Playwright's own browser download is not reachable everywhere).
CHROMIUM_INSTALL = command -v chromium >/dev/null || { $(SUDO) apt-get install -y -qq chromium >/dev/null \
	|| { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }; }
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

test: $(VENV)/.dev
	$(CHROMIUM_INSTALL)
	$(PY) -m pytest -q -ra --durations=12

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

# Each prints JSON; the test photo factory lives in tests/ (photos derived from package images).
bench: $(VENV)/.dev
	PYTHONPATH=tests HF_HUB_OFFLINE=1 $(PY) -m bench.e2e
	PYTHONPATH=tests HF_HUB_OFFLINE=1 $(PY) -m bench.classify
	HF_HUB_OFFLINE=1 $(PY) -m bench.train
	HF_HUB_OFFLINE=1 $(PY) -m bench.generate
	HF_HUB_OFFLINE=1 $(PY) -m bench.load_memory
	HF_HUB_OFFLINE=1 $(PY) -m bench.generate_placements
	HF_HUB_OFFLINE=1 $(PY) -m bench.video_memory
	PYTHONPATH=tests HF_HUB_OFFLINE=1 $(PY) -m bench.micro_likeness --sheet bench/results/micro_likeness.png

clean:
	rm -rf $(VENV) .pytest_cache
