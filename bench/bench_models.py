"""Random-weight Allegro pipelines in the hub layout, for the CPU benchmarks (written under
bench/out/, which git ignores; never committed).

Each size keeps the real architecture (block layout, tile geometry, tensor names) and shrinks only
widths and depths, so the package's nodes and diffusers' AllegroPipeline load the very same files.
Also: booting ComfyUI in-process with the package loaded, and a ComfyUI base directory for it.
"""
import json
import shutil
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "out"
for path in (REPO_ROOT, REPO_ROOT / "tests"):        # `allegro` and the test harness
    if str(path) not in sys.path:
        sys.path.append(str(path))

# Real-release values the reduced models keep (the hub config sets these explicitly).
RELEASE_TRANSFORMER = dict(interpolation_scale_t=2.2, interpolation_scale_h=2.0, interpolation_scale_w=2.0)

# name → (transformer kwargs, T5 kwargs, VAE kwargs). Head size 96 as released; widths reduced.
SIZES = {
    # A few seconds per sampling step on 2 cores: the sampler and step-cache benchmarks.
    "reduced": (dict(num_attention_heads=4, attention_head_dim=96, num_layers=4),
                dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2),
                dict(block_out_channels=(8, 16, 32, 32), layers_per_block=2, norm_num_groups=4)),
    # Weights big enough for memory figures to mean something (T5 0.75 GB, DiT 1.1 GB, VAE 0.7 GB in fp32).
    "medium": (dict(num_attention_heads=12, attention_head_dim=96, num_layers=12),
               dict(d_model=1024, d_kv=64, num_heads=16, d_ff=2816, num_layers=12),
               dict()),                                   # the released VAE's size (175M parameters)
    # The test suite's tiny sizes: smoke runs.
    "tiny": (dict(num_attention_heads=2, attention_head_dim=24, num_layers=2),
             dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2),
             dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)),
}
T5_COMMON = dict(relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", vocab_size=32128)
MODEL_INDEX = {"_class_name": "AllegroPipeline", "_diffusers_version": "0.32.0.dev0",
               "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
               "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"],
               "transformer": ["diffusers", "AllegroTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLAllegro"]}
STAMP = "bench-stamp.json"


def pipeline_name(size: str) -> str:
    return f"Allegro-bench-{size}"


def write_pipeline(size: str, out_dir: Path = DEFAULT_OUT) -> Path:
    """models/diffusers/Allegro-bench-<size>/ under `out_dir`/comfy-base, written once (fixed seeds)."""
    from diffusers import AllegroTransformer3DModel, AutoencoderKLAllegro, EulerAncestralDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    from allegro_harness.runtime import comfyui_dir, prepare_base_dir

    transformer_kwargs, t5_kwargs, vae_kwargs = SIZES[size]
    base = prepare_base_dir(Path(out_dir) / "comfy-base")
    folder = base / "models" / "diffusers" / pipeline_name(size)
    stamp = {"size": size, "kwargs": [transformer_kwargs, t5_kwargs, {k: list(v) if isinstance(v, tuple) else v
                                                                      for k, v in vae_kwargs.items()}]}
    if (folder / STAMP).is_file() and json.loads((folder / STAMP).read_text()) == stamp:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    width = transformer_kwargs["num_attention_heads"] * transformer_kwargs["attention_head_dim"]
    AllegroTransformer3DModel(**transformer_kwargs, cross_attention_dim=width, caption_channels=t5_kwargs["d_model"],
                              **RELEASE_TRANSFORMER).save_pretrained(folder / "transformer")
    AutoencoderKLAllegro(**vae_kwargs).save_pretrained(folder / "vae")
    T5EncoderModel(T5Config(**t5_kwargs, **T5_COMMON)).save_pretrained(folder / "text_encoder")
    (folder / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(comfyui_dir() / "comfy" / "text_encoders" / "t5_tokenizer" / name, folder / "tokenizer" / name)
    EulerAncestralDiscreteScheduler().save_config(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    (folder / STAMP).write_text(json.dumps(stamp))
    return folder


def boot_comfy(out_dir: Path = DEFAULT_OUT):
    """ComfyUI's executor in this process (CPU), with the package loaded as a custom node."""
    import logging
    from allegro_harness.inprocess import InProcessComfy
    root = logging.getLogger()
    root.setLevel(logging.ERROR)         # ComfyUI's optional nodes (audio…) warn about missing packages
    runtime = InProcessComfy.boot(Path(out_dir) / "comfy-base")
    root.setLevel(logging.WARNING)
    return runtime


def node(comfy, class_type: str):
    """An instance of a registered node class (called directly: what the executor calls)."""
    return comfy.node_types[class_type]()


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


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
