"""allegro.checkpoint_kinds: recognising weights by name and shape (configs: test_config.py).

Key sets come from synthetic dicts with each family's distinctive names (original/ComfyUI formats)
and from the real diffusers/transformers classes built on the meta device (no memory, no time)."""
import pytest
import torch

from allegro.checkpoint_kinds import identify, identify_checkpoint
from allegro.checkpoints import read_safetensors_header
from allegro.config import measure_transformer
from meta_models import TINY_VAE, add_ti2v_branches, allegro_dit, meta_state_dict

def synthetic(*names, shape=(1,)):
    return {name: torch.zeros(shape) for name in names}


def prefixed(prefix, *names):
    return [prefix + name for name in names]


SD = "model.diffusion_model."
SYNTHETIC = {   # the distinctive names of each family in its original (and ComfyUI's) format
    "sd1.5/sd2 unet or checkpoint": synthetic(
        *prefixed(SD, "input_blocks.0.0.weight", "middle_block.0.in_layers.0.weight"),
        "first_stage_model.encoder.down.0.block.0.conv1.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"),
    "sdxl": synthetic(*prefixed(SD, "input_blocks.0.0.weight", "label_emb.0.0.weight"),
                      "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"),
    "flux": synthetic("double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "img_in.weight"),
    "sd3": synthetic(*prefixed(SD, "joint_blocks.0.context_block.attn.qkv.weight", "x_embedder.proj.weight")),
    "wan": synthetic("patch_embedding.weight", "blocks.0.self_attn.q.weight", "head.modulation"),
    "hunyuan video": synthetic("double_blocks.0.img_attn_qkv.weight",
                               "txt_in.individual_token_refiner.blocks.0.norm1.weight"),
    "ltxv": synthetic("patchify_proj.weight", "adaln_single.emb.timestep_embedder.linear_1.weight",
                      "transformer_blocks.0.attn1.q_norm.weight"),
    "mochi": synthetic("t5_yproj.weight", "t5_y_embedder.to_kv.weight", "blocks.0.attn.qkv_x.weight"),
    "clip text encoder": synthetic("text_model.encoder.layers.0.self_attn.q_proj.weight",
                                   "text_model.embeddings.token_embedding.weight"),
    "pixart": synthetic("t_block.1.weight", "x_embedder.proj.weight", "blocks.0.attn.qkv.weight"),
    "image vae": synthetic("encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight",
                           "quant_conv.weight"),
    "t5_encoder": synthetic("shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight",
                            "encoder.final_layer_norm.weight"),
    "unknown": synthetic("foo.weight", "bar.bias"),
}


@pytest.mark.parametrize("kind", list(SYNTHETIC))
def test_identify_synthetic_families(kind):
    assert identify(SYNTHETIC[kind]) == kind


def test_identify_reports_prefixes():
    assert identify_checkpoint(SYNTHETIC["sdxl"]).prefix == SD
    found = identify_checkpoint({SD + k: v for k, v in allegro_dit().items()})
    assert (found.kind, found.prefix) == ("allegro_t2v", SD) and SD in found.description
    from diffusers import AutoencoderKLAllegro
    vae = meta_state_dict(lambda: AutoencoderKLAllegro(**TINY_VAE))
    for prefix, weights, kind in [("transformer.", allegro_dit(), "allegro_t2v"), ("vae.", vae, "allegro_vae"),
                                  ("first_stage_model.", vae, "allegro_vae")]:
        found = identify_checkpoint({prefix + k: v for k, v in weights.items()})
        assert (found.kind, found.prefix) == (kind, prefix)


def real_classes():
    """Tiny configurations of each family's diffusers/transformers class."""
    import diffusers as d
    import transformers as t
    unet = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    heads = dict(num_attention_heads=2, attention_head_dim=8)
    return {
        "allegro_vae": lambda: d.AutoencoderKLAllegro(**TINY_VAE),
        "t5_encoder": lambda: t.T5EncoderModel(t.T5Config(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                                                          vocab_size=100)),
        "clip text encoder": lambda: t.CLIPTextModel(t.CLIPTextConfig(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
            bos_token_id=0, eos_token_id=1, pad_token_id=1)),
        "pixart": lambda: d.PixArtTransformer2DModel(
            sample_size=8, num_layers=2, patch_size=2, caption_channels=32, in_channels=4, cross_attention_dim=16,
            out_channels=8, norm_type="ada_norm_single", norm_elementwise_affine=False, **heads),
        "flux": lambda: d.FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, joint_attention_dim=32,
            pooled_projection_dim=32, num_attention_heads=2, attention_head_dim=16, axes_dims_rope=[4, 4, 8]),
        "sd3": lambda: d.SD3Transformer2DModel(
            sample_size=32, patch_size=1, in_channels=4, num_layers=1, out_channels=4, caption_projection_dim=16,
            joint_attention_dim=32, pooled_projection_dim=64, **heads),
        "hunyuan video": lambda: d.HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=16,
            pooled_projection_dim=8, rope_axes_dim=(2, 4, 4)),
        "wan": lambda: d.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                               in_channels=16, out_channels=16, text_dim=32, ffn_dim=32, num_layers=2),
        "ltxv": lambda: d.LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, cross_attention_dim=16, num_layers=1,
            caption_channels=32, **heads),
        "mochi": lambda: d.MochiTransformer3DModel(
            patch_size=2, num_layers=2, pooled_projection_dim=16, in_channels=12, text_embed_dim=32, time_embed_dim=4,
            max_sequence_length=16, **heads),
        "sd1.5/sd2 unet or checkpoint": lambda: d.UNet2DConditionModel(**unet),
        "sdxl": lambda: d.UNet2DConditionModel(**unet, addition_embed_type="text_time", addition_time_embed_dim=8,
                                               projection_class_embeddings_input_dim=80),
        "image vae": lambda: d.AutoencoderKL(block_out_channels=(8, 8), norm_num_groups=4, latent_channels=4,
                                             down_block_types=("DownEncoderBlock2D",) * 2,
                                             up_block_types=("UpDecoderBlock2D",) * 2),
    }


def test_identify_real_model_classes():
    found = {kind: identify(meta_state_dict(factory)) for kind, factory in real_classes().items()}
    assert found == {kind: kind for kind in found}
    assert identify(allegro_dit()) == "allegro_t2v"
    assert identify(add_ti2v_branches(allegro_dit())) == "allegro_ti2v"
    hub_style_clip = {"text_model." + k: v for k, v in meta_state_dict(real_classes()["clip text encoder"]).items()}
    assert identify(hub_style_clip) == "clip text encoder"


def test_identify_works_on_a_header_without_loading(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "dit.safetensors"
    dit = allegro_dit(num_attention_heads=1, attention_head_dim=96, cross_attention_dim=96)
    save_file({k: torch.zeros(v.shape) for k, v in dit.items()}, path)
    header, _ = read_safetensors_header(path)
    assert identify(header) == "allegro_t2v"
    assert measure_transformer(header, "allegro_t2v", "dit.safetensors")["num_layers"] == 2
