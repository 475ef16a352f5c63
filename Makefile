# Two commands do everything on a fresh machine:
#   make demo   - broker up if none, workers up, the sample job through both vision agents
#   make test   - venv, install, Kafka jars, broker, all tests, broker down
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test unit demo broker-up broker-down clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,rocksdb]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m visionjobs.testing.run_tests

unit: $(STAMP)
	$(BIN)/pytest -m "not integration" tests

demo: $(STAMP)
	$(BIN)/visionjobs demo

broker-up: $(STAMP)
	$(BIN)/visionjobs broker up

broker-down: $(STAMP)
	$(BIN)/visionjobs broker down

clean:
	rm -rf $(VENV) .visionjobs .pytest_cache
