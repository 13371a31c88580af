# Two commands do everything on a fresh machine:
#   make demo   set up .venv if needed, then run the main job on the embedded default
#   make test   set up .venv if needed, then run the test suite
# A second run with nothing changed reinstalls and rebuilds nothing (stamp file below).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.brixel-installed
PYTEST_ARGS ?=

.PHONY: env demo test clean-env
env: $(STAMP)

$(STAMP): setup.py constraints.txt scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)
	@touch $@

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	BRIXEL_REQUIRE_STACK=1 $(PY) -m pytest tests $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV)
