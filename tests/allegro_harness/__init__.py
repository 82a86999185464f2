"""Test harness: a real ComfyUI (in-process or as a server) with this package installed."""
