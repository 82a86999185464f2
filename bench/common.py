"""What the CPU benchmarks share: their random-weight pipelines (allegro_devtools.random_models, written
under bench/out/, which git ignores), booting ComfyUI in-process with the package loaded, and the
options of the VAE benchmarks. Run the benchmarks as modules from the repository root:
`.venv/bin/python -m bench.bench_sampler`."""
from pathlib import Path

from allegro_devtools.random_models import write_bench_pipeline
from allegro_devtools.runtime import REPO_ROOT, prepare_base_dir

# The benchmarks' one prompt, seed and reference sampling settings.
PROMPT = "A red fox runs through fresh snow at dawn, cinematic lighting."
NEGATIVE = "blurry, low quality, watermark"
SEED = 42
CFG = 7.5
SCHEDULER = "linspace (reference)"

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


class SamplingSetup:
    """One benchmark pipeline loaded through the package's nodes, ready to sample: what the cache benchmarks
    (bench_step_cache, bench_caches) share. `sample(model, seed)` runs the Allegro Sampler (the reference
    sampler and noise stream) with the given, possibly patched, MODEL; `decode(latent)` gives the frames."""

    def __init__(self, size: str, video: tuple[int, int, int], steps: int, out_dir: Path = DEFAULT_OUT):
        folder = write_pipeline(size, Path(out_dir))
        self.runtime = runtime = boot_comfy(Path(out_dir))
        choice = "diffusers/" + folder.name
        t5, = runtime.call("AllegroVideo_T5Loader", text_encoder=choice, dtype="fp32")
        self.positive, self.negative = runtime.call("AllegroVideo_TextEncode", clip=t5, prompt=PROMPT,
                                                    negative_prompt=NEGATIVE, use_template=False, clean_caption=False)
        self.model, = runtime.call("AllegroVideo_ModelLoader", model_name=choice, weight_dtype="fp32")
        self.vae, = runtime.call("AllegroVideo_VAELoader", vae_name=choice, dtype="fp32")
        frames, height, width = video
        self.latent, = runtime.call("AllegroVideo_EmptyLatentVideo", width=width, height=height, length=frames,
                                    batch_size=1)
        self.steps, self.cfg, self.scheduler = steps, CFG, SCHEDULER

    def sample(self, model, seed: int) -> dict:
        return self.runtime.call("AllegroVideo_Sampler", model=model, positive=self.positive, negative=self.negative,
                                 latent=self.latent, seed=seed, steps=self.steps, cfg=self.cfg,
                                 sampler_name="euler_ancestral", scheduler=self.scheduler, noise_stream="reference",
                                 denoise=1.0)[0]

    def decode(self, latent: dict):
        return self.runtime.call("AllegroVideo_VAEDecode", samples=latent, vae=self.vae)[0]


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
