"""What refusing NaN/inf weights costs: loading a large safetensors file into a model's parameters with the
finite check (allegro.tensor_checks) and without it, side by side, plus the check alone on loaded tensors.

The file holds tensors shaped like the DiT's (2304-wide linears, 4x MLPs) up to the chosen size; loading is
what the loaders do: read_safetensors (the header checks, then safetensors' load_file), then a copy into
freshly allocated parameters of the same dtype (as load_state_dict does).

    .venv/bin/python -m bench.bench_weight_checks                       # 2 GiB of bf16 weights
    .venv/bin/python -m bench.bench_weight_checks --gib 0.05 --reps 1   # smoke
"""
import argparse
import tempfile
from pathlib import Path
from unittest import mock

import torch
from safetensors.torch import save_file

from allegro import tensor_checks
from allegro.checkpoints import read_safetensors
from bench.timing import alternate, markdown_table, median, report

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": torch.float8_e4m3fn}


def write_weights(path: Path, total_bytes: int, dtype: torch.dtype) -> int:
    """DiT-shaped tensors (attention 2304x2304, MLP 2304x9216 and back) up to `total_bytes`; returns elements."""
    shapes, tensors, size, index = [(2304, 2304)] * 4 + [(9216, 2304), (2304, 9216)], {}, 0, 0
    generator = torch.Generator().manual_seed(0)
    while size < total_bytes:
        shape = shapes[index % len(shapes)]
        tensors[f"transformer_blocks.{index // len(shapes)}.w{index % len(shapes)}"] = \
            (torch.randn(shape, generator=generator) * 0.02).to(dtype)
        size += tensors[next(reversed(tensors))].nbytes
        index += 1
    save_file(tensors, str(path))
    return sum(t.numel() for t in tensors.values())


def load_into_parameters(path: Path, check: bool) -> float:
    if check:
        weights, _ = read_safetensors(path)
    else:
        with mock.patch.object(tensor_checks, "refuse_non_finite", lambda *_: None):
            weights, _ = read_safetensors(path)
    parameters = {name: torch.empty_like(tensor) for name, tensor in weights.items()}
    for name, tensor in weights.items():
        parameters[name].copy_(tensor)
    return len(parameters)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the weights file in GiB")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out-dir", default=None, help="where to write the markdown report (and the temp file)")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.out_dir) as folder:
        path = Path(folder) / "weights.safetensors"
        elements = write_weights(path, int(args.gib * 2 ** 30), DTYPES[args.dtype])
        loaded, _ = read_safetensors(path)
        jobs = {"load with the finite check": lambda: load_into_parameters(path, True) and None,
                "load without it": lambda: load_into_parameters(path, False) and None,
                "the check alone (loaded tensors)": lambda: tensor_checks.refuse_non_finite(path, loaded)}
        results = alternate(jobs, args.reps, warmup=1)
        size = path.stat().st_size
    base = median(results["load without it"])
    rows = [[name, f"{median(values):.3f}", f"{median(values) / base:.2f}"] for name, values in results.items()]
    body = [f"{size / 2 ** 30:.2f} GiB of {args.dtype} weights ({elements / 1e9:.2f} B elements, DiT-shaped tensors), "
            f"median of {args.reps} alternating runs after a warm-up, on {torch.get_num_threads()} threads.",
            markdown_table(["", "seconds", "ratio to loading without the check"], rows)]
    report("Weight checks: NaN/inf refused at load", body, args.markdown)


if __name__ == "__main__":
    main()
