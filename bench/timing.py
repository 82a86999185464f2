"""Shared benchmark helpers: side-by-side timing, peak memory, and the markdown report.

Timing runs the compared jobs in turn (A, B, A, B, …) after a warm-up and reports medians: on a
shared, noisy machine, load that comes and goes hits both jobs alike, so the ratio stays fair.
Peak memory is the process's high-water mark (VmHWM), reset just before the measured work, so
a job run in its own fresh subprocess reports what that work alone needed on top of what was
already resident.
"""
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
CHILD_MARK = "BENCH_CHILD "
GIB = 1024 ** 3


# --- timing ----------------------------------------------------------------------------------
def alternate(jobs: dict[str, Callable], reps: int, warmup: int = 1, log=True) -> dict[str, list[dict]]:
    """Run every job once per round, in the given order, `warmup` unrecorded rounds then `reps`
    recorded ones. A job returns None (its wall time is used), seconds, or a dict with "seconds"
    and whatever else it measured. Returns {job name: [result dict per recorded round]}."""
    results = {name: [] for name in jobs}
    for round_index in range(warmup + reps):
        for name, job in jobs.items():
            start = time.perf_counter()
            value = job()
            wall = time.perf_counter() - start
            result = value if isinstance(value, dict) else {"seconds": wall if value is None else float(value)}
            if round_index >= warmup:
                results[name].append(result)
            if log:
                label = "warm-up" if round_index < warmup else f"rep {round_index - warmup + 1}/{reps}"
                print(f"[{label}] {name}: {result['seconds']:.3f} s", file=sys.stderr, flush=True)
    return results


def median(results: list[dict], key: str = "seconds") -> float:
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


# --- memory ----------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss() -> int:
    return (_status_kib("VmRSS") or 0) * 1024


def peak_rss() -> int:
    """High-water mark of this process's RSS since the last reset (or since it started)."""
    value = _status_kib("VmHWM")
    if value is None:
        import resource
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value * 1024


class AnonPeak:
    """Peak anonymous RSS (RssAnon), sampled every `interval` s in a thread. VmHWM also counts
    file-backed pages such as memory-mapped weights, which the kernel can drop under pressure;
    anonymous memory is what can run a machine out of RAM. (Sampling can miss a spike shorter
    than the interval.)"""

    def __init__(self, interval: float = 0.02):
        import threading
        self.interval, self.peak, self.stopped = interval, 0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self.stopped.wait(self.interval):
            self.peak = max(self.peak, (_status_kib("RssAnon") or 0) * 1024)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stopped.set()
        self.thread.join()

    def take(self) -> int:
        """The peak since the last take (at least the current value); restarts from the current value."""
        current = (_status_kib("RssAnon") or 0) * 1024
        peak, self.peak = max(self.peak, current), current
        return peak


def run_child(module: str, args: list[str]) -> dict:
    """Run `python -m module *args` from the repository root in a fresh process; return the JSON it printed
    with `child_result`, plus "process_peak_rss": the child's whole-life peak RSS (ru_maxrss from wait4)."""
    import tempfile
    command = [sys.executable, "-m", module, *args]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, cwd=REPO_ROOT)
        _, status, usage = os.wait4(process.pid, 0)         # wait4: this child's own rusage
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0), stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{err[-4000:]}")
    for line in reversed(out.splitlines()):
        if line.startswith(CHILD_MARK):
            return {**json.loads(line[len(CHILD_MARK):]), "process_peak_rss": usage.ru_maxrss * 1024}
    raise RuntimeError(f"{' '.join(command)} printed no result:\n{out[-2000:]}\n{err[-2000:]}")


def child_result(payload: dict):
    """What a child process reports to `run_child` (one JSON line on stdout)."""
    print(CHILD_MARK + json.dumps(payload), flush=True)


def measure(work: Callable) -> tuple[object, dict]:
    """(work(), {"seconds", "peak_rss", "baseline_rss"}): the RSS high-water mark during `work`."""
    import gc
    gc.collect()
    reset_peak_rss()
    baseline = current_rss()
    start = time.perf_counter()
    value = work()
    seconds = time.perf_counter() - start
    return value, {"seconds": seconds, "peak_rss": peak_rss(), "baseline_rss": baseline}


# --- report ----------------------------------------------------------------------------------
def gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """The command that reproduces this run, from the repository root."""
    python = Path(sys.executable)
    try:
        python = python.relative_to(REPO_ROOT) if python.is_relative_to(REPO_ROOT) else Path(sys.executable)
    except ValueError:
        pass
    main = sys.modules["__main__"].__spec__           # run as `python -m bench.<name>`
    return " ".join(shlex.quote(str(part)) for part in [python, "-m", main.name, *sys.argv[1:]])


def machine() -> str:
    import torch
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def report(title: str, body: list[str], markdown_path: str | None):
    """Print the report (title, text, tables, the command) and write it to `markdown_path` if given."""
    text = "\n\n".join([f"### {title}", *body, f"Command: `{command_line()}`"]) + "\n"
    print(text, flush=True)
    if markdown_path:
        Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown_path).write_text(text)
