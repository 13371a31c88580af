# Two commands do everything on a fresh machine:
#   make demo   set up .venv if needed, then run the main job on the embedded default
#               (distillation, then segmentation, then detection; make demo-distill|demo-seg|demo-det alone)
#   make test   set up .venv if needed, then run the test suite
# A second run with nothing changed reinstalls and rebuilds nothing (stamp file below).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.brixel-installed
PYTEST_ARGS ?=

.PHONY: env demo demo-distill demo-seg demo-det test clean-env
env: $(STAMP)

$(STAMP): setup.py constraints.txt scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)
	@touch $@

# the three parts of the demo; each also runs alone (seg/det distil the BRIXEL weights they
# need first if work_dirs/demo/brixel/ has none)
demo: demo-distill demo-seg demo-det
	@echo "make demo: tables in work_dirs/demo/summary.json; pictures: work_dirs/demo/demo_pca.png (features)," \
	      "work_dirs/demo/segmentation/pictures/predictions.png, work_dirs/demo/detection/pictures/detections.png"

demo-distill: $(STAMP)
	$(PY) tools/demo.py

demo-seg: $(STAMP)
	$(PY) tools/demo_seg.py

demo-det: $(STAMP)
	$(PY) tools/demo_det.py

test: $(STAMP)
	BRIXEL_REQUIRE_STACK=1 $(PY) -m pytest tests $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV)
