"""Developer tools of ComfyUI-Allegro, shared by tests/, bench/ and scripts/ (never loaded by ComfyUI):

runtime, inprocess, server, browser   a real ComfyUI (in this process, as a server, in chromium)
workflow_api, workflow_builder        UI workflow -> API prompt; node descriptions -> UI workflow
workflow_check                        what the shipped workflows may contain, and the checks on them
random_models                         random-weight Allegro checkpoints in the real formats, by size preset

Run its consumers from the repository root (`python -m scripts.demo`, `python -m bench.run_all`, pytest),
which puts this package on sys.path."""
