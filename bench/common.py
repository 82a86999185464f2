"""What the CPU benchmarks share: their random-weight pipelines (allegro_devtools.random_models, written
under bench/out/, which git ignores), booting ComfyUI in-process with the package loaded, and the
options of the VAE benchmarks. Run the benchmarks as modules from the repository root:
`.venv/bin/python -m bench.bench_sampler`."""
from pathlib import Path

from allegro_devtools.random_models import write_bench_pipeline
from allegro_devtools.runtime import REPO_ROOT, prepare_base_dir

DEFAULT_OUT = REPO_ROOT / "bench" / "out"


def write_pipeline(size: str, out_dir: Path = DEFAULT_OUT) -> Path:
    """models/diffusers/Allegro-bench-<size>/ under `out_dir`/comfy-base, written once (fixed seeds)."""
    base = prepare_base_dir(Path(out_dir) / "comfy-base")
    return write_bench_pipeline(base / "models", size)


def boot_comfy(out_dir: Path = DEFAULT_OUT):
    """ComfyUI's executor in this process (CPU), with the package loaded as a custom node."""
    import logging
    from allegro_devtools.inprocess import InProcessComfy
    root = logging.getLogger()
    root.setLevel(logging.ERROR)         # ComfyUI's optional nodes (audio…) warn about missing packages
    runtime = InProcessComfy.boot(Path(out_dir) / "comfy-base")
    root.setLevel(logging.WARNING)
    return runtime


def add_reduced_vae_arguments(parser):
    """The options of the VAE benchmarks that choose the reduced-channel VAE and its tiles."""
    parser.add_argument("--channels", type=lambda s: tuple(int(c) for c in s.split(",")), default=(8, 16, 32, 32),
                        help="block_out_channels (released: 128,256,512,512)")
    parser.add_argument("--groups", type=int, default=4, help="GroupNorm groups (released: 32)")
    parser.add_argument("--sample-size", type=int, default=320, help="tile side in pixels (released: 320)")
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT))
    parser.add_argument("--markdown", help="also write the report here")


def child_arguments(args) -> list[str]:
    """The command-line arguments that make a child process benchmark the same VAE and size."""
    return ["--size", "x".join(map(str, args.size)), "--channels", ",".join(map(str, args.channels)),
            "--groups", str(args.groups), "--sample-size", str(args.sample_size), "--out-dir", args.out_dir]
