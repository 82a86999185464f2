# Two commands do all set-up on a fresh machine (see README):
#   make demo   runs workflows/allegro_t2v.json end to end in a headless ComfyUI and prints the video path
#   make test   runs the whole test suite (unit, ComfyUI integration, browser) on ComfyUI 0.3.75 and, when
#               their tarballs are in ../shared/comfyui/, on 0.33.0 (whole suite) and 0.8.0 (the tests that
#               run ComfyUI, browser ones aside), then the numerics tests under another CPU kernel level;
#               the passes run in two lanes side by side (scripts/test.sh)
# and for development:
#   make test-fast   everything not marked slow, server or browser, on the base ComfyUI (about a minute)
#   make bench       the CPU benchmarks into bench/RESULTS.md
# Scripts and benchmarks run as modules from the repository root (python -m scripts.demo), which puts
# allegro_devtools/ (the shared ComfyUI harness, workflow tools and random-weight models) on sys.path.
PY := .venv/bin/python

.PHONY: setup demo test test-fast bench

setup:
	bash scripts/setup.sh >/dev/null

demo: setup
	$(PY) -m scripts.demo

test:
	bash scripts/test.sh $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not server and not browser" $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.run_all
