"""GGUF files of the Allegro DiT, read and written with the `gguf` package (the format's own library).

A file holds the transformer's tensors under their usual names (quantised ones as GGML blocks, the
rest as F32/F16/BF16, see `quantization`), `general.architecture = "allegro"`, and the model's config
as JSON under `allegro.config` (the same JSON a single .safetensors file carries under "config":
{"transformer": {...}, "vae": {"scaling_factor": ...}}), so a single file loads without its folder.
Reading returns the metadata as strings, the config under "config" as safetensors metadata has it.
"""
import json
from pathlib import Path

import numpy as np
import torch

from . import gguf_quants
from .checkpoint_kinds import CheckpointError
from .quantization import FLOAT_DTYPES, QuantizedWeight

ARCHITECTURE = "allegro"
CONFIG_KEY = "allegro.config"
GGUF_MAGIC = b"GGUF"


def _gguf():
    try:
        import gguf
    except ImportError:
        raise CheckpointError("Reading or writing .gguf files needs the `gguf` package: "
                              "pip install -r ComfyUI-Allegro/requirements.txt (or pip install gguf).") from None
    return gguf


def _field_value(field):
    """A GGUF metadata field as a plain Python value (string, number, or list)."""
    try:
        return field.contents()
    except Exception:                          # an array type this reader cannot flatten: keep its name only
        return None


def read_gguf(path) -> tuple[dict, dict[str, str]]:
    """({name: tensor or QuantizedWeight}, metadata as strings) of a GGUF file. Raises CheckpointError
    for a damaged file or a tensor type this package cannot dequantise."""
    path = Path(path)
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError, KeyError) as error:
        raise CheckpointError(f"{path} starts like a GGUF file but cannot be read ({error}): it is truncated or "
                              "damaged. Download or convert it again.") from None
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = _field_value(field)
        if value is not None:
            metadata["config" if key == CONFIG_KEY else key] = value if isinstance(value, str) else json.dumps(value)
    weights = {}
    for tensor in reader.tensors:
        type_name = gguf_quants.NAMES_BY_TYPE_ID.get(int(tensor.tensor_type))
        shape = torch.Size(reversed([int(n) for n in tensor.shape]))
        if type_name is None:
            supported = ", ".join([*gguf_quants.FORMATS, *FLOAT_DTYPES])
            raise CheckpointError(
                f"{path}: tensor {tensor.name} is stored as {tensor.tensor_type.name}, which this package does not "
                f"read (it reads {supported}). Convert the transformer with `python -m scripts.convert_weights SRC "
                "DST --quant Q4_K` (or Q5_K, Q6_K, Q8_0).")
        data = torch.from_numpy(np.array(tensor.data))            # a copy: the reader's view is a read-only memmap
        if type_name in gguf_quants.FORMATS:
            weights[tensor.name] = QuantizedWeight(data, type_name, shape)
        elif type_name == "BF16":
            weights[tensor.name] = data.view(torch.bfloat16).reshape(shape)
        else:
            weights[tensor.name] = data.reshape(shape)
    return weights, metadata


def write_gguf(path, stored: dict, config: dict | None = None, extra: dict[str, str] | None = None) -> None:
    """Write tensors (float tensors and GGML-block QuantizedWeights, as `quantization.quantize_tensor`
    makes them) to a GGUF file with the Allegro architecture key and `config` as JSON."""
    gguf = _gguf()
    writer = gguf.GGUFWriter(path=None, arch=ARCHITECTURE)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if config is not None:
        writer.add_string(CONFIG_KEY, json.dumps(config))
    for key, value in (extra or {}).items():
        writer.add_string(key, value)
    for name, value in stored.items():
        if isinstance(value, QuantizedWeight):
            type_id = gguf_quants.FORMATS[value.format][2]
            writer.add_tensor(name, value.data.contiguous().numpy(), raw_dtype=gguf.GGMLQuantizationType(type_id))
        elif value.dtype == torch.bfloat16:
            raw = value.contiguous().view(torch.int16).numpy().view(np.uint8)
            writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.BF16)
        elif value.dtype in (torch.float32, torch.float16):
            writer.add_tensor(name, value.contiguous().numpy())
        else:
            raise ValueError(f"{name}: GGUF stores float32, float16, bfloat16 or GGML blocks, not {value.dtype}")
    writer.write_header_to_file(path=Path(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
