"""Measure how far the numerics tests' comparisons move with the CPU kernels torch picks.

Runs the selected tests once per kernel level (ATEN_CPU_CAPABILITY = default, avx2, avx512 — those this CPU has)
and thread count (1, 2), each run recording every comparison's measured error (tests/support/numerics.py), then writes one
table: per comparison, the largest error seen under each setting, the bound the test asserts and the margin.
A bound is sound when it sits a few times above the largest value of its row.

    .venv/bin/python -m scripts.measure_spread                 # the tests marked numerics
    .venv/bin/python -m scripts.measure_spread tests/comfyui/test_lora.py -k merged   # any pytest selection
    .venv/bin/python -m scripts.measure_spread --levels avx2,avx512 --threads 2 --out docs/numerics-spread.md
    ALLEGRO_SPREAD_DIR=/tmp/spread make test; .venv/bin/python -m scripts.measure_spread --from /tmp/spread
                                                     # the table from the records a `make test` run left
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from allegro_devtools.runtime import REPO_ROOT

LEVELS = ("default", "avx2", "avx512")
THREADS = (1, 2)
RECORD_ENV = "ALLEGRO_SPREAD_RECORD"        # read by tests/support/numerics.py


def capability_under(level: str) -> str:
    """What torch actually runs when asked for `level` (a CPU without AVX-512 falls back to its best)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = dict(os.environ, ATEN_CPU_CAPABILITY=level)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()


def run_setting(level: str, threads: int, pytest_args: list[str], record: Path) -> int:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=level, OMP_NUM_THREADS=str(threads), **{RECORD_ENV: str(record)})
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args]
    print(f"[spread] {level}, {threads} thread(s): {' '.join(command[1:])}", flush=True)
    return subprocess.run(command, env=env, cwd=REPO_ROOT).returncode


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def table(results: dict, settings: list[str]) -> str:
    """results[(test, label)] = {"bound": b, setting: largest value}."""
    head = ["comparison", *settings, "largest", "bound", "bound / largest"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (test, label), row in sorted(results.items()):
        largest = max((row[s] for s in settings if s in row), default=0.0)
        bound = row.get("bound")
        margin = "exact" if largest == 0 else (f"{bound / largest:.1f}" if bound else "")
        name = f"`{test}`" + (f" {label}" if label else "")
        cells = [f"{row[s]:.2e}" if s in row else "–" for s in settings]
        rows.append("| " + " | ".join([name, *cells, f"{largest:.2e}", f"{bound:.0e}" if bound else "", margin]) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table (markdown) there")
    parser.add_argument("--threads", default=",".join(map(str, THREADS)), help="thread counts, e.g. 1,2")
    parser.add_argument("--levels", default=",".join(LEVELS), help="kernel levels, e.g. default,avx2,avx512")
    parser.add_argument("--records", type=Path, help="keep each setting's raw records (JSON lines) in this folder")
    parser.add_argument("--from", dest="source", type=Path,
                        help="run nothing: tabulate the records (<setting>.jsonl) already in this folder")
    args, pytest_args = parser.parse_known_args(argv)
    pytest_args = pytest_args or ["-m", "numerics"]
    results: dict = defaultdict(dict)
    settings, failed = [], []
    if args.source:
        for record in sorted(args.source.glob("*.jsonl"), key=lambda path: path.stat().st_mtime):   # newest bound last
            settings.append(record.stem)
            add_records(results, record.stem, read_records(record))
        return write_table(results, settings, args.out, f"records of {args.source.name}/", failed)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.records or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for level in args.levels.split(","):
            actual = capability_under(level)
            for threads in map(int, args.threads.split(",")):
                setting = f"{level} ({actual}), {threads}t"
                record = folder / f"{level}-{threads}.jsonl"
                record.unlink(missing_ok=True)
                if run_setting(level, threads, pytest_args, record) != 0:
                    failed.append(setting)
                settings.append(setting)
                add_records(results, setting, read_records(record))
    command = " ".join(["python -m scripts.measure_spread", *sys.argv[1:]] if argv is None else argv)
    return write_table(results, settings, args.out, command, failed)


def add_records(results: dict, setting: str, entries: list[dict]) -> None:
    for entry in entries:
        row = results[(entry["test"], entry["label"])]
        row[setting] = max(row.get(setting, 0.0), entry["value"])
        if entry.get("bound") is not None:
            row["bound"] = entry["bound"]


def write_table(results: dict, settings: list[str], out: Path | None, command: str, failed: list[str]) -> int:
    text = table(results, settings)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"# Spread of the numerics comparisons across CPU kernels\n\nMade by `{command}` "
                       f"(torch {torch_version()}, {cpu_name()}): the largest relative error each comparison "
                       f"measured under each kernel level and thread count, beside the bound its test asserts."
                       f"\n\n{text}\n", encoding="utf-8")
    if failed:
        print(f"[spread] tests failed under: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def torch_version() -> str:
    import torch
    return torch.__version__


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
