"""Smoke runs of the CPU benchmarks (bench/): each runs as a module from the repository root at its tiny
--quick settings, as `python -m bench.run_all --quick` does, and must print its markdown table, the command
and correct exactness figures. No timing is asserted: the machine is shared and tiny sizes time nothing
meaningful."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from allegro_devtools.runtime import REPO_ROOT
from bench.run_all import BENCHES
from numerics import assert_measured

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-out")


def run_quick(name: str, out_dir: Path) -> str:
    module, _full, quick = BENCHES[name]
    done = subprocess.run([sys.executable, "-m", module, *quick, "--out-dir", str(out_dir)],
                          capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"^\|---\|", out, re.M), out               # a markdown table
    # The command that reproduces the run, as run from the repository root.
    assert re.search(rf"^Command: `\S*python\S* -m {re.escape(module)} ", out, re.M), out[-2000:]
    return out


def table_rows(out: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("|---")][1:]


def test_sampler_bench(out_dir):
    """The sampler benchmark runs, and its latent equals diffusers' pipeline. Measured spread (avx512, 1 thread;
    ComfyUI 0.3.75 and 0.33.0): 1.1e-6; bound 1e-4 (91x the largest)."""
    out = run_quick("sampler", out_dir)
    rows = table_rows(out)
    assert len(rows) == 3 and rows[-1][0].startswith("diffusers")
    # Both samplers did the same work: the final latents agree (relative difference).
    assert_measured(float(re.search(r"relative ([0-9.e+-]+)\)", out).group(1)), 1e-4, "sampler vs diffusers")


def test_step_cache_bench(out_dir):
    out = run_quick("step_cache", out_dir)
    rows = {row[0]: row for row in table_rows(out)}
    assert rows["no cache"][4] == "inf" and rows["no cache"][5] == "inf"    # PSNR of the run against itself
    assert len(rows) == 5                                          # off, 3 thresholds, another seed


def test_caches_bench(out_dir):
    out = run_quick("caches", out_dir)
    rows = {row[0]: row for row in table_rows(out)}
    assert len(rows) == 7
    assert rows["no cache"][5] == "inf" and rows["no cache"][7] == "0.00"
    pab = rows["Allegro PAB (defaults: spatial 2, 100..800)"]
    skipped, total = map(int, pab[2].split("/"))
    assert pab[1] == rows["no cache"][1] and skipped < total        # PAB runs every call, skips self-attentions
    assert float(pab[7]) > 0


def test_vae_decode_bench_has_no_holes(out_dir):
    out = run_quick("vae_decode", out_dir)
    tables = [table_rows(block) for block in out.split("\n\n") if block.startswith("| ")]
    (size, tiles, _, _, _, never_written, _), = tables[0]
    assert size == "24x240x320" and tiles == "1 / 1"
    # 320 px wide with 240-px tiles: diffusers' grid stops at 240 px, leaving a quarter of every frame black;
    # ours lengthens that tile by the 80-px gap (no more than the overlap).
    ours, diffusers = (float(share.rstrip("%")) for share in never_written.split(" / "))
    assert ours == 0 and diffusers == pytest.approx(25.0, abs=0.01)
    (size, auto_tiles, *_, max_abs, psnr, _), = tables[1]          # auto tiles: the whole video fits in memory
    assert auto_tiles == "1 of 24x240x320" and 0 <= float(max_abs) <= 2 and float(psnr) > 0


def test_ti2v_encode_bench_shortcut_is_exact(out_dir):
    """The TI2V encode benchmark's shortcut equals encoding the whole video. Measured spread (avx512, 1 thread; ComfyUI
    0.3.75 and 0.33.0): 1.13e-6; bound 1e-5 (8.8x the largest)."""
    out = run_quick("ti2v_encode", out_dir)
    differences = [float(v) for v in re.findall(r"frame: ([0-9.e+-]+) \(latent max", out)]
    assert len(differences) == 1
    assert_measured(differences[0], 1e-5, "shortcut vs whole video")


def test_memory_bench_unloads_t5(out_dir):
    out = run_quick("memory", out_dir)
    assert "memory short before the sampler unloaded: T5TextEncoder" in out
    assert len(re.findall(r"^\|---", out, re.M)) == 2              # one stage table per mode


def test_quant_bench(out_dir):
    out = run_quick("quant", out_dir)
    assert len(re.findall(r"^\|---", out, re.M)) == 3               # released sizes, reduced model, VRAM plan
    reduced = out.split("#### Reduced model")[1].split("#### Which format")[0]
    rows = {row[0]: row for row in table_rows(reduced)}
    assert set(rows) == {"fp32", "Q4_K", "fp8_scaled"}
    assert float(rows["fp32"][5]) == 0.0                            # the reference against itself
    assert 0 < float(rows["Q4_K"][5]) < 0.1 and 0 < float(rows["fp8_scaled"][5]) < 0.05
    assert "Arithmetic (88x720x1280" in out


def test_gpu_bench_step_cache_loop_on_cpu():
    """bench_gpu.py's step-cache comparison, on a tiny model on CPU: threshold 0 never skips and
    reproduces the uncached run exactly; a large threshold skips calls and stays close."""
    import torch
    from allegro.step_cache import StepCache
    from allegro.config import transformer_config_from_dict
    from allegro_devtools.random_models import TRANSFORMER_KWARGS
    from bench.bench_gpu import euler_sample, psnr, random_model

    torch.manual_seed(0)
    model = random_model(torch.float32, config=transformer_config_from_dict(TRANSFORMER_KWARGS))
    noise = torch.randn(1, 4, 3, 8, 8)
    context = torch.randn(2, 7, TRANSFORMER_KWARGS["caption_channels"])
    mask = torch.ones(2, 7)
    with torch.no_grad():
        uncached = euler_sample(model, noise, context, mask, steps=12)
        never_skips = StepCache(0.0)
        assert torch.equal(euler_sample(model, noise, context, mask, steps=12, step_cache=never_skips), uncached)
        assert never_skips.computed == 12 and never_skips.skipped == 0
        skipping = StepCache(0.5)
        cached = euler_sample(model, noise, context, mask, steps=12, step_cache=skipping)
    assert skipping.skipped > 0 and skipping.computed + skipping.skipped == 12
    assert psnr(uncached, uncached) == float("inf")
    assert 10 < psnr(cached, uncached) < float("inf")


def test_weight_checks_bench(out_dir):
    rows = {row[0]: row for row in table_rows(run_quick("weight_checks", out_dir))}
    assert set(rows) == {"load with the finite check", "load without it", "the check alone (loaded tensors)"}
    assert rows["load without it"][2] == "1.00"


def test_regex_rules_bench_times_every_shape(out_dir):
    """The linearity of the cleaner's rules is timed there, not asserted here (timing depends on the load)."""
    from bench.bench_regex_rules import HOSTILE_UNITS
    rows = table_rows(run_quick("regex_rules", out_dir))
    assert [row[0] for row in rows] == list(HOSTILE_UNITS) and all(float(row[1]) > 0 for row in rows)


def test_prompt_cleaning_bench(out_dir):
    rows = table_rows(run_quick("prompt_cleaning", out_dir))
    assert [row[0] for row in rows] == ["broken markup"]
    assert rows[0][4] == "8,189"          # the cleaner stops at its last window, whatever the prompt's length


def test_training_bench(out_dir):
    out = run_quick("training", out_dir)
    rows = table_rows(out)
    measured = {row[0]: row for row in rows if row[0].startswith("checkpointing")}
    assert set(measured) == {"checkpointing off", "checkpointing on"}
    assert all(float(row[1]) > 0 for row in measured.values())
    # The first step's loss comes before any update: the same forward with or without checkpointing.
    first = {mode: row[5].split(" → ")[0] for mode, row in measured.items()}
    assert first["checkpointing off"] == first["checkpointing on"]
    computed = [row for row in rows if "x" in row[0] and row[0][0].isdigit()]
    assert len(computed) == 12
    totals = {(row[0], row[1], row[2]): float(row[-1]) for row in computed}
    # Checkpointing and block swap each lower the computed VRAM.
    assert totals[("88x720x1280", "on", "32")] < totals[("88x720x1280", "off", "32")]
    assert totals[("88x720x1280", "on", "16")] < totals[("88x720x1280", "on", "32")]
