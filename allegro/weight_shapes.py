"""Every tensor of a checkpoint against the model its decided config describes, before anything is built.

`config.decide_*_config` reads the sizes from a few tensors (the patch embedding, the first block);
a file whose other tensors disagree (a damaged or hand-edited file, a block from another model)
would otherwise reach `load_state_dict` and end in torch's raw "size mismatch for …". Here the
model is built on the meta device (no memory, no initialisation) from the config, and each tensor's
shape is compared with its parameter's: the error names the file, the tensor, the shape found and
the shape expected. Tensors the model has no place for, and places with no tensor, are named too.
Quantised weights (`quantization.QuantizedWeight`) are compared by the shape they encode.
"""
import functools
from typing import Mapping

import torch

from .checkpoint_kinds import CheckpointError
from .config import TransformerConfig, VAEConfig
from .quoting import quote

SHOWN = 4                  # tensors named in one message


@functools.lru_cache(maxsize=8)
def transformer_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of the DiT `config` describes."""
    from .transformer import AllegroTransformer3D
    return _shapes(AllegroTransformer3D(config, device="meta"))


@functools.lru_cache(maxsize=8)
def vae_shapes(config: VAEConfig) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of the VAE `config` describes."""
    from .vae import AllegroVAE
    return _shapes(AllegroVAE(config, device="meta"))


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def check_transformer_shapes(config: TransformerConfig, weights: Mapping, source: str) -> None:
    check_shapes(transformer_shapes(config), weights, source, describe_transformer(config))


def check_vae_shapes(config: VAEConfig, weights: Mapping, source: str) -> None:
    check_shapes(vae_shapes(config), weights, source, f"{len(config.block_out_channels)} blocks of "
                                                     f"{list(config.block_out_channels)} channels")


def describe_transformer(config: TransformerConfig) -> str:
    kind = "TI2V" if config.ti2v else "T2V"
    return (f"{kind}, {config.num_layers} blocks of width {config.inner_dim}, captions {config.caption_channels} wide, "
            f"{config.in_channels} latent channels")


def check_shapes(expected: Mapping[str, tuple], weights: Mapping, source: str, model: str) -> None:
    """CheckpointError unless `weights` has exactly `expected`'s tensors, each of its shape."""
    wrong = [(name, tuple(weights[name].shape), shape) for name, shape in expected.items()
             if name in weights and tuple(weights[name].shape) != shape]
    if wrong:
        listed = "; ".join(f"{quote(name)} is {list(found)}, expected {list(shape)}" for name, found, shape in wrong[:SHOWN])
        more = f" (and {len(wrong) - SHOWN} more)" if len(wrong) > SHOWN else ""
        raise CheckpointError(
            f"{source}: {len(wrong)} tensor(s) do not have the shape the model's config needs ({model}): {listed}{more}. "
            "The file is damaged or mixes tensors of two models; download or convert it again.")
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) the model needs are missing (e.g. "
                         f"{', '.join(quote(n) for n in missing[:SHOWN])})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensor(s) have no place in it (e.g. "
                         f"{', '.join(quote(n) for n in unexpected[:SHOWN])})")
        raise CheckpointError(f"{source}: the tensors do not match the model's config ({model}): {'; '.join(parts)}. "
                              "The file is incomplete or from another model version; download or convert it again.")
