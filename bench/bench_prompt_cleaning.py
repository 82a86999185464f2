"""What a huge prompt costs the text encoder's preparation (caption cleaning + tokenising, before T5 runs):
`prepare_for_t5` on 1 MB prompts of several shapes, side by side with a 2,000-character prompt of the same
shape (the size the cleaner always reads whole), with ComfyUI's own T5 tokenizer.

    .venv/bin/python -m bench.bench_prompt_cleaning                 # 1 MB prompts, 5 reps
    .venv/bin/python -m bench.bench_prompt_cleaning --mib 0.05 --reps 1   # smoke
"""
import argparse

from allegro.prompt import prepare_for_t5
from allegro_devtools.runtime import t5_tokenizer_dir
from bench.timing import alternate, markdown_table, median, report

# Shapes that made the old cleaner quadratic, and plain English.
SHAPES = {
    "English words": "a red fox runs through the snowy forest at dawn, ",
    "broken markup": "<a.png\n",
    "URLs": "see https://example.com/a/b?c=d for more ",
    "hyphens and dots": "wide-angle . shot - of . a - city . at - night ",
}
SHORT_CHARS = 2000


def t5_tokenizer():
    """ComfyUI's bundled T5 tokenizer (the one the Allegro text encoder uses)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(t5_tokenizer_dir())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=1.0, help="size of the long prompts in MiB")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    tokenizer = t5_tokenizer()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]      # noqa: E731
    size = int(args.mib * 2 ** 20)
    jobs, read = {}, {}
    for shape in args.shapes:
        unit = SHAPES[shape]
        long_prompt = (unit * (size // len(unit) + 1))[:size]
        short_prompt = long_prompt[:SHORT_CHARS]
        jobs[f"{shape}: long"] = lambda text=long_prompt, shape=shape: read.__setitem__(
            shape, prepare_for_t5(text, encode).read_chars)
        jobs[f"{shape}: short"] = lambda text=short_prompt: prepare_for_t5(text, encode) and None
    results = alternate(jobs, args.reps, warmup=1)
    rows = []
    for shape in args.shapes:
        long_s, short_s = median(results[f"{shape}: long"]), median(results[f"{shape}: short"])
        rows.append([shape, f"{long_s:.3f}", f"{short_s:.3f}", f"{long_s / short_s:.1f}", f"{read[shape]:,}"])
    body = [f"`prepare_for_t5` (clean + tokenise) on {size:,}-character prompts and on their first {SHORT_CHARS:,} "
            f"characters, {args.reps} alternating reps (medians), ComfyUI's T5 tokenizer.",
            markdown_table(["prompt shape", f"{args.mib:g} MiB s", f"{SHORT_CHARS:,} chars s", "ratio",
                            "characters read"], rows)]
    report("Prompt cleaning: bounded work on huge prompts", body, args.markdown)


if __name__ == "__main__":
    main()
