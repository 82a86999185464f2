"""Convert an Allegro (or Allegro-TI2V) transformer to GGUF or scaled fp8, for small GPUs.

    python -m scripts.convert_weights SRC DST --quant Q8_0|Q6_K|Q5_K|Q4_K|fp8_scaled [--device cuda]

SRC: a hub download (the folder with model_index.json, or its transformer/ folder) or a transformer
.safetensors. Pickles (.ckpt/.pt/.bin) are refused, as the loaders refuse them. DST: the file to write
(.gguf for the Q formats, .safetensors for fp8_scaled) or a folder to write it into. TI2V branches are
kept. The config (transformer, and the VAE's latent scale when the download has it) goes into the
file's metadata, so the single file loads in 'Load Allegro Model' without its folder. Put it in
ComfyUI/models/diffusion_models/.

Which tensors are quantised: `allegro.quantization.storage_format` (the 32 blocks' attention and
MLP weights; embeddings, the final projection and 1-D tensors stay 16/32-bit). A weight whose rows
are not whole blocks of the format (Q4_K/Q5_K/Q6_K: 256 values, Q8_0: 32) stays 16-bit and the
converter names how many and which; when that leaves no weight to quantise (a model narrower than
the block), it refuses instead of writing an unquantised file. K-quant search runs on --device (a
GPU converts the 2.8B-parameter model in seconds; a CPU takes minutes).

The file is written under a temporary name beside DST (`.<name>.<random>.partial`, which no loader
lists) and renamed to DST only once complete: a full disk or a crash never leaves a partial .gguf
/ .safetensors, and with --overwrite the old file stays until the new one replaces it.
"""
import argparse
import contextlib
import errno
import json
import os
import sys
import time
import uuid
from pathlib import Path

from allegro import config as allegro_config
from allegro.checkpoint_kinds import ALLEGRO_T2V, ALLEGRO_TI2V, KIND_DESCRIPTIONS, CheckpointError, identify_checkpoint, \
    strip_prefix
from allegro.checkpoints import read_checkpoint
from allegro.devices import parse_device
from allegro.gguf_quants import FORMATS as GGUF_BLOCKS
from allegro.quantization import FP8_SCALED, TARGETS, QuantizedWeight, block_weights, formats_in, quantize_tensor, \
    rows_not_in_blocks, scaled_fp8_state_dict
from allegro.weight_shapes import check_transformer_shapes

TRANSFORMER_CLASSES = {ALLEGRO_T2V: "AllegroTransformer3DModel", ALLEGRO_TI2V: allegro_config.TI2V_CLASS}
PARTIAL_SUFFIX = ".partial"            # the temporary file's; ComfyUI lists no file with it


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
    check_transformer_shapes(config, weights, str(checkpoint.source))
    latent_scale = allegro_config.decide_latent_scale(checkpoint.companions.get("vae"))
    report_unquantised(weights, quant, checkpoint.source, log)
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
    try:
        with written_in_place(target) as partial:
            if quant == FP8_SCALED:
                from safetensors.torch import save_file
                save_file(scaled_fp8_state_dict(stored), str(partial),
                          metadata={"format": "pt", "config": json.dumps(metadata)})
            else:
                from allegro.gguf_file import write_gguf
                write_gguf(partial, stored, metadata)
    except OSError as error:
        needed = sum(value.nbytes for value in stored.values())
        raise CheckpointError(write_failure(target, error, needed)) from None
    counts = ", ".join(f"{count} {name}" for name, count in sorted(formats_in(stored).items()))
    log(f"wrote {target} ({target.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - started:.0f} s; "
        f"tensors: {counts}")
    return target


def report_unquantised(weights: dict, quant: str, source, log) -> None:
    """Log the weights `quant` keeps 16-bit because their rows are not whole blocks; refuse when that
    is every weight it would quantise (the output would be an unquantised file under a quantised name)."""
    shapes = {name: tuple(value.shape) for name, value in weights.items()}
    misfits = rows_not_in_blocks(shapes, quant)
    if not misfits:
        return
    block = GGUF_BLOCKS[quant][0]
    lengths = ", ".join(str(n) for n in sorted({shape[-1] for shape in misfits.values()}))
    candidates = len(block_weights(shapes))
    if len(misfits) == candidates:
        left = {name: len(rows_not_in_blocks(shapes, name)) for name in TARGETS}
        fully = [name for name, count in left.items() if count == 0]
        partly = [name for name, count in left.items() if 0 < count < candidates]
        raise CheckpointError(
            f"{source}: {quant} stores rows in blocks of {block} values, but none of the model's {candidates} "
            f"block weights has such rows (their rows are {lengths} values long), so the file would not be "
            f"quantised at all. Nothing was written. Use {' or '.join(fully)} for this model"
            + (f", or {' / '.join(partly)}, which quantise only part of them." if partly else "."))
    examples = ", ".join(sorted(misfits)[:4])
    log(f"kept unquantised (16-bit): {len(misfits)} of the {candidates} block weights, whose rows ({lengths} values) "
        f"are not whole {quant} blocks of {block}, e.g. {examples}")


@contextlib.contextmanager
def written_in_place(target: Path):
    """A temporary path beside `target` to write; renamed to `target` when the block ends without error
    (replacing any file there only then), removed when it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        yield partial
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_failure(target: Path, error: OSError, needed: int) -> str:
    """What went wrong writing `target`, and that nothing partial was left."""
    reason = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else error.strerror or str(error)
    kept = "the existing file is unchanged" if target.exists() else "no partial file was left"
    return (f"could not write {target}: {reason}. Nothing was written ({kept}). The file needs about "
            f"{needed / 2**30:.2f} GiB: free that much space in {target.parent} or give another destination.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="hub folder, its transformer/ folder, or a transformer .safetensors")
    parser.add_argument("destination", help="output file (.gguf / .safetensors) or folder")
    parser.add_argument("--quant", required=True, choices=TARGETS)
    parser.add_argument("--device", default="cpu", help="where to quantise (cpu, cuda); default cpu")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        device = parse_device(args.device, "--device")
        convert(args.source, args.destination, args.quant, device, args.overwrite)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
