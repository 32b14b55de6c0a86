# Two commands: `make report` (train or load every study model, verify, write
# reports/report.html) and `make test` (the test suite, as CI runs it).
# Each creates .venv and installs the pinned requirements on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=
# make report RETRAIN=1 trains every model again instead of loading reports/models/
# make report SCHEDULER=local:2 (or tcp://HOST:8786) trains missing runs on a Dask cluster
SCHEDULER ?=
REPORT_FLAGS := $(if $(RETRAIN),--retrain,) $(if $(SCHEDULER),--scheduler $(SCHEDULER),)

.PHONY: report test smoke clean-cache

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

report: $(VENV)/.installed
	$(BIN)/pytest --profile full $(REPORT_FLAGS) --capture=tee-sys \
	  --html=reports/report.html --self-contained-html $(ARGS)

test: $(VENV)/.installed
	$(BIN)/pytest --profile full --no-train --benchmark-disable $(ARGS)

clean-cache:
	rm -rf .cache
