"""Run the CPU benchmarks and write their tables into bench/RESULTS.md (`make bench`).

    .venv/bin/python -m bench.run_all                          # full settings (~1.5 h on 2 cores) → bench/RESULTS.md
    .venv/bin/python -m bench.run_all --only sampler memory    # re-run some; the other sections are kept
    .venv/bin/python -m bench.run_all --quick                  # smoke settings (~2 min) → bench/out/RESULTS-quick.md

Each benchmark runs as its own process and writes its report (tables + the exact command); this
script puts them between markers in the results file, so one section can be refreshed alone.
GPU figures come from `python -m bench.bench_gpu` on a machine with a CUDA GPU.
"""
import argparse
import datetime
import re
import subprocess
import sys
from pathlib import Path

from bench.timing import REPO_ROOT, machine

BENCH = REPO_ROOT / "bench"

# Smoke runs: 240-px tiles (the smallest diffusers blends correctly) and fewer channels.
SMALL_VAE = ["--sample-size", "240", "--channels", "4,8,8,8"]
# name → (module, full-size arguments, smoke arguments); the smoke tests run the smoke arguments.
BENCHES = {
    "sampler": ("bench.bench_sampler", ["--video", "40x256x256"],
                ["--size", "tiny", "--video", "8x64x64", "--steps", "3", "--reps", "1", "--warmup", "0"]),
    "step_cache": ("bench.bench_step_cache", [],
                   ["--size", "tiny", "--video", "8x64x64", "--steps", "8", "--reps", "1", "--warmup", "0"]),
    "caches": ("bench.bench_caches", [],
               ["--size", "tiny", "--video", "8x64x64", "--steps", "8", "--reps", "1", "--warmup", "0"]),
    # 40x520x560 (diffusers' grid complete), 40x368x640 (uneven) and 88x720x1280, with "auto" tiles
    "vae_decode": ("bench.bench_vae_decode", [], SMALL_VAE + ["--size", "24x240x320", "--reps", "1"]),
    "ti2v_encode": ("bench.bench_ti2v_encode", [], SMALL_VAE + ["--size", "24x240x240", "--modes", "first+last", "--reps", "1"]),
    "memory": ("bench.bench_memory", [], ["--size", "tiny", "--video", "8x64x64", "--modes", "classic-short", "cache-none"]),
    "weight_checks": ("bench.bench_weight_checks", [], ["--gib", "0.02", "--reps", "1"]),
    "prompt_cleaning": ("bench.bench_prompt_cleaning", [], ["--mib", "0.05", "--reps", "1", "--shapes", "broken markup"]),
    "regex_rules": ("bench.bench_regex_rules", [], ["--chars", "2000", "--reps", "1"]),
    "training": ("bench.bench_training", [], ["--size", "tiny", "--video", "8x64x64", "--steps", "3"]),
    "quant": ("bench.bench_quant", ["--layers", "4", "--video", "8x128x128"], ["--layers", "2", "--video", "8x64x64", "--formats", "Q4_K", "fp8_scaled"]),
}
MARK = "<!-- bench:{} -->"
END = "<!-- /bench:{} -->"
GPU_SECTION = """## GPU

No GPU was lent to the session that measured the CPU figures above, so there are no GPU numbers
here yet. On a machine with a CUDA GPU, `python -m bench.bench_gpu` measures the full-size model (32
blocks, width 2304, 88 x 720 x 1280 = 79,200 tokens, CFG batch 2, bf16, random weights): seconds
per step, minutes per 100 steps, TFLOP/s and peak VRAM, and prints a table for this section:

    .venv/bin/python -m bench.bench_gpu                       # all blocks resident, auto SDPA backend
    .venv/bin/python -m bench.bench_gpu --resident 32 16 8    # block swap: VRAM vs speed
    .venv/bin/python -m bench.bench_gpu --backend flash cudnn --compile
    .venv/bin/python -m bench.bench_gpu --vae                 # + tiled VAE decode of the full latent
    .venv/bin/python -m bench.bench_gpu --step-cache 0.05 0.1 0.2   # step cache: speed-up and PSNR, real architecture
"""


def run_bench(name: str, quick: bool, out_dir: Path) -> str:
    module, full, smoke = BENCHES[name]
    markdown = out_dir / "results" / f"{name}.md"
    markdown.unlink(missing_ok=True)
    command = [sys.executable, "-m", module, *(smoke if quick else full), "--out-dir", str(out_dir),
               "--markdown", str(markdown)]
    print(f"== {name}: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    # The out-dir and markdown arguments only say where scratch files go: leave them out of the record.
    text = markdown.read_text()
    return re.sub(r" --out-dir \S+ --markdown \S+`", "`", text)


def assemble(path: Path, sections: dict[str, str], quick: bool) -> str:
    """The results file with `sections` replaced (or added), the others kept as they were."""
    old = path.read_text() if path.is_file() else ""
    kept = {}
    for name in BENCHES:
        found = re.search(re.escape(MARK.format(name)) + r"\n(.*?)" + re.escape(END.format(name)), old, re.S)
        if found:
            kept[name] = found.group(1)
    kept.update(sections)
    stamp = datetime.date.today().isoformat()
    parts = ["# Benchmark results", "",
             f"CPU figures: {machine()}. Last updated {stamp}"
             + (" with --quick (smoke settings: not meaningful numbers)." if quick else "."),
             "Reproduce all: `.venv/bin/python -m bench.run_all` (or `make bench`); each table gives its own "
             "command. Timed jobs alternate (A, B, A, B, ...) and the medians are reported, because other "
             "work shares this machine; ratios are the robust figures, absolute seconds are noisy.", "",
             "## CPU", ""]
    for name in BENCHES:
        if name in kept:
            parts += [MARK.format(name), kept[name].rstrip("\n"), END.format(name), ""]
    parts.append(GPU_SECTION)
    return "\n".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke settings (seconds each; numbers not meaningful)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these (other sections are kept)")
    parser.add_argument("--output", help="results file (default: bench/RESULTS.md; with --quick bench/out/RESULTS-quick.md)")
    parser.add_argument("--out-dir", default=str(BENCH / "out"), help="scratch: models, samples, reports")
    args = parser.parse_args()
    output = Path(args.output or (BENCH / "out" / "RESULTS-quick.md" if args.quick else BENCH / "RESULTS.md"))
    out_dir = Path(args.out_dir)
    sections = {}
    for name in args.only or BENCHES:
        sections[name] = run_bench(name, args.quick, out_dir)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(assemble(output, sections, args.quick))        # after each, so a long run keeps progress
    print(f"Wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
