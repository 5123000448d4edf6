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

test: $(VENV)/.dev
	$(PY) -m pytest -q -ra

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

bench: $(VENV)/.dev
	$(PY) bench/e2e.py
	$(PY) bench/classify.py
	$(PY) bench/train.py

clean:
	rm -rf $(VENV) .pytest_cache
