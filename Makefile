# Two commands do all set-up on a fresh machine (see README):
#   make demo   runs workflows/allegro_t2v.json end to end in a headless ComfyUI and prints the video path
#   make test   runs the whole test suite (unit, ComfyUI integration, browser)
PY := .venv/bin/python

.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) scripts/demo.py

test: setup
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run_all.py
