"""The model loader node builds a native ComfyUI model whose forward — through BaseModel.apply_model,
Allegro's model-sampling and the caption mask — equals diffusers' AllegroTransformer3DModel; every
supported source and dtype loads, and T2V / TI2V are told apart by their weights."""
import pytest
import torch
from diffusers import AllegroTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro

from allegro.schedule import sigma_at, timestep_at, training_sigmas
from numerics import assert_measured, assert_relative

pytestmark = pytest.mark.slow


def load(comfy, name, dtype="fp32"):
    return comfy.call("AllegroVideo_ModelLoader", model_name=name, weight_dtype=dtype)[0]


def reference_rope(frames, rows, cols, head_dim):
    freqs_t, freqs_h, freqs_w, grid_t, grid_h, grid_w = get_3d_rotary_pos_embed_allegro(
        head_dim, ((0, 0), (rows, cols)), (rows, cols), frames, (2.2, 2.0, 2.0))
    positions = torch.cartesian_prod(grid_t.long(), grid_h.long(), grid_w.long()).T.reshape(3, 1, -1)
    return (freqs_t, freqs_h, freqs_w), tuple(positions)


def inputs(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(2, 4, 3, 10, 12) * 20
    context = torch.randn(2, 16, 32)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, 6:] = 0
    mask[1, 12:] = 0
    return x, context, mask


def test_forward_through_comfyui_equals_diffusers(comfy, tiny_models):
    """The DiT called through ComfyUI's model (apply_model: sigma to timestep, the caption mask) predicts what
    diffusers' forward gives, and the masked caption padding changes nothing. Measured spread (avx2/avx512, 1
    thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): vs diffusers 0, padding changed 0; bound 1e-5 (the DiT parity
    bound)."""
    patcher = load(comfy, "diffusers/Allegro-tiny")
    model = patcher.model
    reference = AllegroTransformer3DModel.from_pretrained(tiny_models["diffusers_t2v"] / "transformer").eval()
    x, context, mask = inputs()
    sigma = torch.tensor([14.6, 14.6])
    with torch.no_grad():
        denoised = model.apply_model(x, sigma, c_crossattn=context, attention_mask=mask)
        t = timestep_at(sigma, training_sigmas())
        eps = reference(x / (sigma.view(-1, 1, 1, 1, 1) ** 2 + 1) ** 0.5, context.unsqueeze(1), t,
                        encoder_attention_mask=mask, image_rotary_emb=reference_rope(3, 5, 6, 24), return_dict=False)[0]
    expected = x - eps * sigma.view(-1, 1, 1, 1, 1)
    assert_relative(denoised, expected, 1e-5, "vs diffusers")
    # The caption mask reaches the model: changing padded caption tokens changes nothing.
    altered = context.clone()
    altered[0, 6:] = 50.0
    with torch.no_grad():
        again = model.apply_model(x, sigma, c_crossattn=altered, attention_mask=mask)
    assert_relative(again, denoised, 1e-5, "padding changed")


def test_model_sampling_is_allegros_training_schedule(comfy, tiny_models):
    """ComfyUI's model_sampling is Allegro's training schedule: the reference sigmas, continuous timesteps, the
    reference start noise. Measured spread (default/avx2/avx512 × 1/2 threads): sigma_max - 157.4073 2.77e-5 in
    every setting (bound 1e-3: the constant is written to 4 decimals); timestep(sigma(12.5)) - 12.5 0 in every
    setting (bound 1e-5)."""
    sampling = load(comfy, "diffusers/Allegro-tiny").get_model_object("model_sampling")
    assert torch.equal(sampling.sigmas, training_sigmas())
    assert_measured(abs(sampling.sigma_max.item() - 157.4073), 1e-3, "sigma_max abs")
    t = torch.tensor([999.0, 388.909, 12.5, 0.0])
    assert torch.equal(sampling.sigma(t), sigma_at(t, training_sigmas()))
    # Continuous timesteps (not ComfyUI's nearest-integer lookup).
    assert_measured(abs(sampling.timestep(sampling.sigma(torch.tensor([12.5]))).item() - 12.5), 1e-5, "round trip abs")
    # Start noise as the reference scheduler: randn * sigma_max.
    noise = torch.ones(1, 4, 1, 2, 2)
    assert torch.equal(sampling.noise_scaling(sampling.sigma_max, noise, torch.zeros_like(noise), True),
                       noise * sampling.sigma_max)


@pytest.mark.parametrize("name,ti2v", [
    ("diffusers/Allegro-tiny", False),
    ("diffusers/Allegro-TI2V-tiny", True),
    ("allegro_tiny_t2v.safetensors", False),
    ("allegro_tiny_ti2v.safetensors", True),
    ("allegro_tiny_t2v_noconfig_w192.safetensors", False),
])
def test_every_source_loads_and_kind_comes_from_the_weights(comfy, tiny_models, name, ti2v):
    model = load(comfy, name).model
    assert model.is_ti2v is ti2v
    assert model.diffusion_model.config.ti2v is ti2v
    assert model.diffusion_model.config.rope_shares_equal_lengths is ti2v
    if name.endswith("w192.safetensors"):
        assert (model.diffusion_model.config.num_attention_heads, model.diffusion_model.config.attention_head_dim) == (2, 96)


def test_single_file_equals_folder(comfy, tiny_models):
    """The single-file checkpoint predicts what the diffusers folder predicts. Measured spread (avx2/avx512, 1 thread;
    ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0 (the same weights through the same ops); bound 1e-6."""
    folder = load(comfy, "diffusers/Allegro-tiny").model
    single = load(comfy, "allegro_tiny_t2v.safetensors").model
    x, context, mask = inputs(1)
    sigma = torch.tensor([3.0, 3.0])
    with torch.no_grad():
        assert_relative(single.apply_model(x, sigma, c_crossattn=context, attention_mask=mask),
                        folder.apply_model(x, sigma, c_crossattn=context, attention_mask=mask), 1e-6)


@pytest.mark.parametrize("dtype,stored,tolerance", [
    ("bf16", torch.bfloat16, 1e-2), ("fp16", torch.float16, 2e-3), ("fp8_e4m3fn", torch.float8_e4m3fn, 0.1)])
def test_weight_dtypes_store_as_asked_and_compute_upcast(comfy, tiny_models, dtype, stored, tolerance):
    """Lower-precision storage changes results by rounding only. Measured relative errors of the
    prediction on this tiny model: bf16 2.1e-3, fp16 3.0e-4, fp8 3.5e-2 — the order of each
    format's rounding (2^-8, 2^-11, 2^-4 relative); the bounds allow ~3-5x that.
    Measured spread (default/avx2/avx512 × 1/2 threads): bf16 2.08e-3 .. 2.09e-3, fp16 2.96e-4 .. 2.97e-4, fp8
    0.0348 in every setting: the rounding of the storage, not the kernels, sets them."""
    exact = load(comfy, "diffusers/Allegro-tiny").model
    model = load(comfy, "diffusers/Allegro-tiny", dtype).model
    assert model.diffusion_model.transformer_blocks[0].attn1.to_q.weight.dtype == stored
    x, context, mask = inputs(2)
    sigma = torch.tensor([100.0, 100.0])      # the prediction (x 100), not x, dominates the output
    with torch.no_grad():
        expected = exact.apply_model(x, sigma, c_crossattn=context, attention_mask=mask)
        actual = model.apply_model(x, sigma, c_crossattn=context, attention_mask=mask)
    assert actual.dtype == torch.float32 and torch.isfinite(actual).all()
    assert_relative(actual, expected, tolerance, dtype)


def test_the_latent_scale_comes_from_the_downloads_vae_config(comfy, tiny_models):
    """A hub folder whose vae/config.json says 0.5 samples at 0.5 (the DiT was trained with its own
    pipeline's VAE scale); a single file without that config samples at the release's 0.13."""
    import json
    import shutil
    folder = tiny_models["diffusers_t2v"].parent / "Allegro-tiny-scale-0.5"
    if not folder.exists():
        shutil.copytree(tiny_models["diffusers_t2v"], folder)
        config = json.loads((folder / "vae" / "config.json").read_text())
        (folder / "vae" / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.5}))
    assert load(comfy, "diffusers/Allegro-tiny-scale-0.5").model.latent_format.scale_factor == 0.5
    assert comfy.call("AllegroVideo_VAELoader", vae_name="diffusers/Allegro-tiny-scale-0.5",
                      dtype="fp32")[0].config.scaling_factor == 0.5
    assert load(comfy, "allegro_tiny_t2v.safetensors").model.latent_format.scale_factor == 0.13
