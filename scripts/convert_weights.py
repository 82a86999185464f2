"""Convert an Allegro (or Allegro-TI2V) transformer to GGUF or scaled fp8, for small GPUs.

    python -m scripts.convert_weights SRC DST --quant Q8_0|Q6_K|Q5_K|Q4_K|fp8_scaled [--device cuda]

SRC: a hub download (the folder with model_index.json, or its transformer/ folder) or a transformer
.safetensors. Pickles (.ckpt/.pt/.bin) are refused, as the loaders refuse them. DST: the file to write
(.gguf for the Q formats, .safetensors for fp8_scaled) or a folder to write it into. TI2V branches are
kept. The config (transformer, and the VAE's latent scale when the download has it) goes into the
file's metadata, so the single file loads in 'Load Allegro Model' without its folder. Put it in
ComfyUI/models/diffusion_models/.

Which tensors are quantised: `allegro.quantization.storage_format` (the 32 blocks' attention and
MLP weights; embeddings, the final projection and 1-D tensors stay 16/32-bit). K-quant search runs
on --device (a GPU converts the 2.8B-parameter model in seconds; a CPU takes minutes).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

from allegro import config as allegro_config
from allegro.checkpoint_kinds import ALLEGRO_T2V, ALLEGRO_TI2V, KIND_DESCRIPTIONS, CheckpointError, identify_checkpoint, \
    strip_prefix
from allegro.checkpoints import read_checkpoint
from allegro.quantization import FP8_SCALED, TARGETS, QuantizedWeight, formats_in, quantize_tensor, \
    scaled_fp8_state_dict

TRANSFORMER_CLASSES = {ALLEGRO_T2V: "AllegroTransformer3DModel", ALLEGRO_TI2V: allegro_config.TI2V_CLASS}


def output_path(source: Path, destination: Path, quant: str) -> Path:
    suffix = ".safetensors" if quant == FP8_SCALED else ".gguf"
    if destination.is_dir():
        stem = source.parent.name if source.name == "transformer" else source.stem if source.is_file() else source.name
        return destination / f"{stem.lower()}_{quant}{suffix}"
    if destination.suffix.lower() != suffix:
        raise CheckpointError(f"{destination}: a {quant} file is written as {suffix}; name it ...{suffix} or give a folder.")
    return destination


def file_config(config, latent_scale: float, kind: str) -> dict:
    """The 'config' metadata: {"transformer": diffusers-style config, "vae": {"scaling_factor": …}}."""
    transformer = {"_class_name": TRANSFORMER_CLASSES[kind], **allegro_config.config_dict(config)}
    return {"transformer": transformer, "vae": {"scaling_factor": latent_scale}}


def convert(source, destination, quant: str, device: str = "cpu", overwrite: bool = False, log=print) -> Path:
    """Read, identify and quantise an Allegro transformer; returns the path written."""
    if quant not in TARGETS:
        raise ValueError(f"--quant must be one of {', '.join(TARGETS)}, not {quant!r}")
    source, destination = Path(source), Path(destination)
    target = output_path(source, destination, quant)
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target} exists; pass --overwrite to replace it.")
    checkpoint = read_checkpoint(source, "transformer")
    found = identify_checkpoint(checkpoint.weights)
    if found.kind not in (ALLEGRO_T2V, ALLEGRO_TI2V):
        raise CheckpointError(f"{checkpoint.source} is {found.description}, not an Allegro transformer.")
    weights = strip_prefix(checkpoint.weights, found.prefix)
    if any(isinstance(value, QuantizedWeight) for value in weights.values()):
        raise CheckpointError(f"{checkpoint.source} is already quantised ({formats_in(weights)}); convert the bf16 "
                              "release weights instead.")
    label = str(checkpoint.source / "config.json") if checkpoint.source.is_dir() else checkpoint.source.name
    config = allegro_config.decide_transformer_config(weights, found.kind, checkpoint.declared, label)
    latent_scale = allegro_config.decide_latent_scale(checkpoint.companions.get("vae"))
    log(f"{KIND_DESCRIPTIONS[found.kind]}: {sum(v.numel() for v in weights.values()) / 1e9:.2f}B parameters, "
        f"{config.num_layers} blocks of width {config.inner_dim}; quantising to {quant} on {device}")
    started = time.perf_counter()
    stored = {}
    for name, tensor in weights.items():
        value = quantize_tensor(name, tensor.to(device), quant)
        stored[name] = (QuantizedWeight(value.data.cpu(), value.format, value.shape,
                                        None if value.scale is None else value.scale.cpu())
                        if isinstance(value, QuantizedWeight) else value.cpu())
    metadata = file_config(config, latent_scale, found.kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    if quant == FP8_SCALED:
        from safetensors.torch import save_file
        save_file(scaled_fp8_state_dict(stored), str(target), metadata={"format": "pt", "config": json.dumps(metadata)})
    else:
        from allegro.gguf_file import write_gguf
        write_gguf(target, stored, metadata)
    counts = ", ".join(f"{count} {name}" for name, count in sorted(formats_in(stored).items()))
    log(f"wrote {target} ({target.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - started:.0f} s; "
        f"tensors: {counts}")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="hub folder, its transformer/ folder, or a transformer .safetensors")
    parser.add_argument("destination", help="output file (.gguf / .safetensors) or folder")
    parser.add_argument("--quant", required=True, choices=TARGETS)
    parser.add_argument("--device", default="cpu", help="where to quantise (cpu, cuda); default cpu")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        convert(args.source, args.destination, args.quant, torch.device(args.device), args.overwrite)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
