"""Is every rule of the caption cleaner linear? Each regex step of `allegro.prompt` (all but the HTML parser and
the encoding fixer, which the prompt windows bound instead) runs on hostile text of two lengths, 8x apart, in
alternation; a linear rule takes about 8x as long on the longer text, a quadratic one about 64x. Timing belongs
here rather than in the tests: a loaded machine moves these ratios (70-75 were seen on a busy one).

    .venv/bin/python -m bench.bench_regex_rules                  # 16,000 vs 128,000 characters, 3 reps
    .venv/bin/python -m bench.bench_regex_rules --chars 2000 --reps 1   # smoke
"""
import argparse

from allegro import prompt
from bench.timing import markdown_table, report

# Text shapes that made the old cleaner's rules quadratic.
HOSTILE_UNITS = {"many URLs": "https://example.com/a-b/c.jpg ", "bare domains": "a.b.c.d.e.com/", "many dashes": "-",
                 "words and dashes": "a-", "a run without spaces": "a", "a run of digits": "1", "dots": "a.",
                 "digits then x": "1x", "whitespace": " ", "nested HTML": "<div><b>", "unclosed tags": "<a\n",
                 "unclosed comments": "<!--", "markup the cleaner deletes": "<a.png\n", "emoji": "🦊"}
FACTOR = 8


def hostile(unit: str, length: int) -> str:
    return (unit * (length // len(unit) + 1))[:length]


def regex_steps() -> list:
    return [step for step in (*prompt._BEFORE_CJK, prompt._DROP_ALL_CJK, *prompt._AFTER_CJK)
            if step not in (prompt._strip_html, prompt._fix_encoding)]


def best_seconds(step, text: str, reps: int) -> float:
    import time
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        step(text)
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=16_000, help="length of the shorter text")
    parser.add_argument("--reps", type=int, default=3, help="best of this many runs per text")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    steps = regex_steps()
    rows = []
    for name, unit in HOSTILE_UNITS.items():
        short, long = hostile(unit, args.chars), hostile(unit, FACTOR * args.chars)
        ratios = []
        for step in steps:
            short_s = best_seconds(step, short, args.reps)
            long_s = best_seconds(step, long, args.reps)
            ratios.append(long_s / max(short_s, 1e-4))      # below 0.1 ms a ratio is noise
        worst = max(range(len(steps)), key=ratios.__getitem__)
        rows.append([name, f"{ratios[worst]:.1f}", str(worst), f"{sorted(ratios)[len(ratios) // 2]:.1f}"])
    body = [f"{len(steps)} regex steps on hostile text of {args.chars:,} and {FACTOR * args.chars:,} characters, "
            f"best of {args.reps}: time ratio long/short (linear ≈ {FACTOR}, quadratic ≈ {FACTOR ** 2}).",
            markdown_table(["text shape", "worst ratio", "worst step", "median ratio"], rows)]
    report("Caption cleaner: every regex rule linear", body, args.markdown)


if __name__ == "__main__":
    main()
