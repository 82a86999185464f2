"""Allegro model shapes for unit tests, built on the meta device (no memory, no time): tiny diffusers
DiTs (T2V, and TI2V by adding the branches), and the released transformer config in the original format."""
import torch

TINY_DIT = dict(num_attention_heads=2, attention_head_dim=24, num_layers=2, cross_attention_dim=48, caption_channels=32,
                sample_frames=6, sample_height=20, sample_width=20)
TINY_VAE = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                sample_size=160)
# rhymes-ai/Allegro transformer/config.json as first published (the original repo's format).
ORIGINAL_HUB_CONFIG = {
    "_class_name": "AllegroTransformer3DModel", "_diffusers_version": "0.30.3", "activation_fn": "gelu-approximate",
    "attention_bias": True, "attention_head_dim": 96, "ca_attention_mode": "xformers", "caption_channels": 4096,
    "cross_attention_dim": 2304, "double_self_attention": False, "downsampler": None, "dropout": 0.0, "in_channels": 4,
    "interpolation_scale_h": 2.0, "interpolation_scale_t": 2.2, "interpolation_scale_w": 2.0, "model_max_length": 300,
    "norm_elementwise_affine": False, "norm_eps": 1e-06, "norm_type": "ada_norm_single", "num_attention_heads": 24,
    "num_embeds_ada_norm": 1000, "num_layers": 32, "only_cross_attention": False, "out_channels": 4, "patch_size": 2,
    "patch_size_t": 1, "sa_attention_mode": "flash", "sample_size": [90, 160], "sample_size_t": 22,
    "upcast_attention": False, "use_additional_conditions": None, "use_linear_projection": False, "use_rope": True,
}


def meta_state_dict(factory):
    with torch.device("meta"):
        return factory().state_dict()


def allegro_dit(**overrides):
    from diffusers import AllegroTransformer3DModel
    return meta_state_dict(lambda: AllegroTransformer3DModel(**{**TINY_DIT, **overrides}))


def add_ti2v_branches(state_dict, width=48, channels=4, patch=2, skip=()):
    out = dict(state_dict)
    for branch in ("pos_embed_mask", "pos_embed_masked_video", "pos_embed_first_frame"):
        if branch not in skip:
            out[f"{branch}.0.proj.weight"] = torch.empty(width, channels, patch, patch, device="meta")
            out[f"{branch}.0.proj.bias"] = torch.empty(width, device="meta")
            out[f"{branch}.1.weight"] = torch.empty(width, width, device="meta")
    return out
