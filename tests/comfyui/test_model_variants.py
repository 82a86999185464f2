"""The published Allegro variants, the 40-frame research models among them: recognised from their hub
config (sample sizes and RoPE interpolation scales), reported with the size they were trained at
when loaded, a warning when a latent of another size is sampled, and the 40x360P model through
ComfyUI at its own size (368x640, 40 frames): equal to diffusers' AllegroPipeline, but decoded
without the 23.9% of black pixels diffusers' tile grid leaves at that size."""
import json
import logging

import pytest
import torch

from allegro.config import (KNOWN_VARIANTS, RELEASE_TRANSFORMER, known_variant, trained_size,
                            transformer_config_from_dict)
from numerics import assert_measured, assert_relative

# transformer/config.json of the hub repos, as published (huggingface.co/rhymes-ai/<repo>/blob/main/…).
HUB_CONFIGS = {
    "rhymes-ai/Allegro-T2V-40x360P": """{"_class_name": "AllegroTransformer3DModel",
        "_diffusers_version": "0.31.0.dev0",
        "activation_fn": "gelu-approximate", "attention_bias": true, "attention_head_dim": 96, "caption_channels": 4096,
        "cross_attention_dim": 2304, "dropout": 0.0, "in_channels": 4, "interpolation_scale_h": 1.0,
        "interpolation_scale_t": 1.0, "interpolation_scale_w": 1.0, "norm_elementwise_affine": false,
        "norm_eps": 1e-06, "norm_type": "ada_norm_single", "num_attention_heads": 24, "num_layers": 32,
        "out_channels": 4, "patch_size": 2, "patch_size_t": 1, "sample_frames": 10, "sample_height": 46,
        "sample_width": 80, "sample_size": [46, 80], "sample_size_t": 10}""",
    "rhymes-ai/Allegro-T2V-40x720P": """{"_class_name": "AllegroTransformer3DModel",
        "_diffusers_version": "0.31.0.dev0",
        "activation_fn": "gelu-approximate", "attention_bias": true, "attention_head_dim": 96, "caption_channels": 4096,
        "cross_attention_dim": 2304, "dropout": 0.0, "in_channels": 4, "interpolation_scale_h": 2.0,
        "interpolation_scale_t": 1.0, "interpolation_scale_w": 2.0, "norm_elementwise_affine": false,
        "norm_eps": 1e-06, "norm_type": "ada_norm_single", "num_attention_heads": 24, "num_layers": 32,
        "out_channels": 4, "patch_size": 2, "patch_size_t": 1, "sample_frames": 10, "sample_height": 90,
        "sample_width": 160, "sample_size": [90, 160], "sample_size_t": 10}""",
    "rhymes-ai/Allegro": """{"_class_name": "AllegroTransformer3DModel", "_diffusers_version": "0.31.0.dev0",
        "activation_fn": "gelu-approximate", "attention_bias": true, "attention_head_dim": 96, "caption_channels": 4096,
        "cross_attention_dim": 2304, "dropout": 0.0, "in_channels": 4, "interpolation_scale_h": 2.0,
        "interpolation_scale_t": 2.2, "interpolation_scale_w": 2.0, "norm_elementwise_affine": false,
        "norm_eps": 1e-06, "norm_type": "ada_norm_single", "num_attention_heads": 24, "num_layers": 32,
        "out_channels": 4, "patch_size": 2, "patch_size_t": 1, "sample_frames": 22, "sample_height": 90,
        "sample_size": [90, 160], "sample_size_t": 22, "sample_width": 160}""",
}


@pytest.mark.parametrize("repo,size,scales", [
    ("rhymes-ai/Allegro-T2V-40x360P", (40, 368, 640), (1.0, 1.0, 1.0)),
    ("rhymes-ai/Allegro-T2V-40x720P", (40, 720, 1280), (1.0, 2.0, 2.0)),
    ("rhymes-ai/Allegro", (88, 720, 1280), (2.2, 2.0, 2.0)),
])
def test_hub_configs_are_recognised_with_their_trained_size(repo, size, scales):
    config = transformer_config_from_dict(json.loads(HUB_CONFIGS[repo]))
    assert trained_size(config) == size
    assert (config.interpolation_scale_t, config.interpolation_scale_h, config.interpolation_scale_w) == scales
    assert known_variant(config).repo == repo


def test_release_defaults_and_ti2v_are_known_and_other_sizes_are_not():
    assert known_variant(RELEASE_TRANSFORMER).repo == "rhymes-ai/Allegro"
    ti2v = transformer_config_from_dict({"_class_name": "AllegroTransformerTI2V3DModel", "sample_size": [90, 160],
                                         "sample_size_t": 22})
    assert known_variant(ti2v).repo == "rhymes-ai/Allegro-TI2V"
    # The 40x360P sample size with the release's RoPE scales is no published model.
    odd = transformer_config_from_dict({**json.loads(HUB_CONFIGS["rhymes-ai/Allegro-T2V-40x360P"]),
                                        "interpolation_scale_t": 2.2})
    assert known_variant(odd) is None and trained_size(odd) == (40, 368, 640)
    assert len({(v.frames, v.height, v.width, v.ti2v, v.interpolation_scales) for v in KNOWN_VARIANTS}) == 4


# ---------------------------------------------------------------------------------------------
# The 40x360P model through ComfyUI (tiny weights with its config and the release's 320-px VAE tiles)

FRAMES, HEIGHT, WIDTH = 40, 368, 640
PROMPT, NEGATIVE, SEED, STEPS = "a lighthouse in a storm at night", "blurry", 77, 2
FOLDER = "diffusers/Allegro-T2V-40x360P-tiny"


@pytest.fixture(scope="module")
def low_res(base_dir, tiny_models):
    from allegro_devtools.random_models import write_low_res_pipeline
    return write_low_res_pipeline(base_dir / "models")


def t2v_graph(width=WIDTH, height=HEIGHT, length=FRAMES) -> dict:
    return {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": FOLDER, "dtype": "fp32"}},
        "dit": {"class_type": "AllegroVideo_ModelLoader", "inputs": {"model_name": FOLDER, "weight_dtype": "fp32"}},
        "vae": {"class_type": "AllegroVideo_VAELoader", "inputs": {"vae_name": FOLDER, "dtype": "fp32"}},
        "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
            "clip": ["t5", 0], "prompt": PROMPT, "negative_prompt": NEGATIVE, "use_template": False,
            "clean_caption": False}},
        "latent": {"class_type": "AllegroVideo_EmptyLatentVideo", "inputs": {
            "width": width, "height": height, "length": length, "batch_size": 1}},
        "sample": {"class_type": "AllegroVideo_Sampler", "inputs": {
            "model": ["dit", 0], "positive": ["text", 0], "negative": ["text", 1], "latent": ["latent", 0],
            "seed": SEED, "steps": STEPS, "cfg": 7.5, "sampler_name": "euler_ancestral",
            "scheduler": "linspace (reference)", "noise_stream": "reference", "denoise": 1.0}},
        "decode": {"class_type": "AllegroVideo_VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
    }


class RecordingHandler(logging.Handler):
    """The log records of a run, at INFO and above (what ComfyUI's console shows)."""
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append((record.levelno, record.getMessage()))

    def __enter__(self):
        root = logging.getLogger()
        self.root_level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)
        logging.getLogger().setLevel(self.root_level)


@pytest.fixture(scope="module")
def ours(comfy, low_res):
    """(sampled latent in VAE space, frames, log records) of the graph at the model's own size."""
    with RecordingHandler() as log:
        result = comfy.run(t2v_graph(), targets=["sample", "decode"])
    assert result.status == "success", result.error
    return result.output("sample")["samples"], result.output("decode"), log.messages


@pytest.fixture(scope="module")
def reference(low_res):
    """diffusers' AllegroPipeline on the same folder: (latent in VAE space, raw decode [T, 3, H, W])."""
    from diffusers import AllegroPipeline
    pipe = AllegroPipeline.from_pretrained(low_res, torch_dtype=torch.float32)
    pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        latents = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.5,
                       num_frames=FRAMES, height=HEIGHT, width=WIDTH, output_type="latent", max_sequence_length=512,
                       generator=torch.Generator("cpu").manual_seed(SEED), clean_caption=False).frames
        latents = latents / pipe.vae.config.scaling_factor
        raw = pipe.vae.decode(latents).sample[0]                     # [T, C, H, W]
    return latents, raw


def test_loading_reports_the_variant_and_its_trained_size(ours):
    _, _, messages = ours
    info = [text for level, text in messages if level == logging.INFO and text.startswith("Loaded ")]
    assert any("rhymes-ai/Allegro-T2V-40x360P, trained at 640x368 with 40 frames (RoPE scales t/h/w 1/1/1)" in text
               and "width 640, height 368, length 40" in text for text in info), info
    # At its own size the sampler has nothing to say.
    assert not [text for level, text in messages if level == logging.WARNING and "trained at" in text]


def test_sampling_another_size_warns_with_the_trained_size(comfy, low_res):
    with RecordingHandler() as log:
        result = comfy.run(t2v_graph(width=256, height=128, length=12), targets=["sample"])
    assert result.status == "success", result.error
    warnings = [text for level, text in log.messages if level == logging.WARNING]
    assert any(text.startswith("Sampling 256x128 with 12 frames (3 latent frames) on rhymes-ai/Allegro-T2V-40x360P")
               and "width 640, height 368, length 40" in text for text in warnings), warnings


def test_the_40x360p_model_equals_diffusers(ours, reference):
    """Same weights, prompt, seed, 368x640x40, the reference sampler: the same latent. Measured 5.8e-5 of the
    largest value: float32 sums over 9,200 tokens, amplified by CFG 7.5 and sigma_max 157 (the random model's
    latents reach about 2,000); the DiT itself agrees to 1e-5 (test below), where the release's RoPE scales
    would change its output by 1e-2.
    Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 5.81e-5 .. 5.82e-5; bound 2e-4
    (3.4x the largest)."""
    latent, _, _ = ours
    expected, _ = reference
    assert latent.shape == expected.shape == (1, 4, FRAMES // 4, HEIGHT // 8, WIDTH // 8)
    assert_relative(latent, expected, 2e-4)


def test_the_dit_reads_the_40_frame_models_rope_scales():
    """One DiT forward with each 40-frame model's config (tiny widths) equals diffusers' with the RoPE its
    pipeline builds from that config, and differs from the release's scales.
    Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0 for both 40-frame configs;
    bound 1e-5 (the DiT parity bound)."""
    from diffusers import AllegroTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro

    from allegro.transformer import AllegroTransformer3D
    tiny = dict(num_attention_heads=2, attention_head_dim=24, num_layers=2, cross_attention_dim=48, caption_channels=32)
    frames, rows, cols = 5, 12, 16
    torch.manual_seed(0)
    x, context, timestep = torch.randn(1, 4, frames, rows, cols), torch.randn(1, 8, 32), torch.tensor([500.0])

    def rope(scales):
        *freqs, grid_t, grid_h, grid_w = get_3d_rotary_pos_embed_allegro(
            24, ((0, 0), (rows // 2, cols // 2)), (rows // 2, cols // 2), frames, scales)
        positions = torch.cartesian_prod(grid_t.long(), grid_h.long(), grid_w.long()).T.reshape(3, 1, -1)
        return tuple(freqs), tuple(positions)

    for repo in ("rhymes-ai/Allegro-T2V-40x360P", "rhymes-ai/Allegro-T2V-40x720P"):
        hub = json.loads(HUB_CONFIGS[repo])
        geometry = {k: hub[k] for k in ("sample_frames", "sample_height", "sample_width", "interpolation_scale_t",
                                        "interpolation_scale_h", "interpolation_scale_w")}
        torch.manual_seed(1)
        reference = AllegroTransformer3DModel(**tiny, **geometry).eval()
        model = AllegroTransformer3D(transformer_config_from_dict(dict(reference.config))).eval()
        model.load_state_dict(reference.state_dict())
        scales = (hub["interpolation_scale_t"], hub["interpolation_scale_h"], hub["interpolation_scale_w"])
        with torch.no_grad():
            actual = model(x, timestep, context, None)
            expected = reference(x, context.unsqueeze(1), timestep, image_rotary_emb=rope(scales), return_dict=False)[0]
            release = reference(x, context.unsqueeze(1), timestep, image_rotary_emb=rope((2.2, 2.0, 2.0)),
                                return_dict=False)[0]
        assert_relative(actual, expected, 1e-5, repo)
        assert (actual - release).abs().max().item() > 1e-3          # measured 9e-3 and more: 1000x the agreement


def test_368x640_decodes_every_pixel_where_diffusers_leaves_23_9_percent_black(ours, reference):
    """diffusers places 320-px tiles every 200 rows / 240 columns and nothing past the last whole stride:
    rows 320..367 and columns 560..639 stay exactly 0 (black before the 0..1 mapping), 23.9% of each frame.
    Ours decodes them: the grid's last tiles reach the border (48 rows, 80 columns longer, each gap no
    longer than the overlap), so the tile covering the top left sees more of the frame than diffusers'
    (its GroupNorm statistics and mid-block attention span it): the same picture there, not the same bits.
    Top rows, ours vs diffusers: measured spread (default/avx2/avx512 × 1/2 threads) 0.0159 in every setting
    (absolute, in 0..1 pixels; the tiling's gap, not the kernels); bound 0.03."""
    _, frames, _ = ours
    _, raw = reference
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and raw.shape == (FRAMES, 3, HEIGHT, WIDTH)
    hole = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    hole[320:], hole[:, 560:] = True, True
    assert abs(hole.float().mean().item() - 0.2391) < 1e-4                  # 1 - 320 * 560 / (368 * 640)
    assert (raw[:, :, hole] == 0).all()
    assert (raw[:, :, ~hole] == 0).float().mean() < 1e-3                    # elsewhere: decoded
    reference_frames = (raw / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)      # what diffusers shows: grey holes
    assert (reference_frames[:, hole] == 0.5).all()
    grey = (frames == 0.5).all(dim=-1)
    assert grey[:, hole].float().mean() < 1e-3                              # ours: decoded there too
    assert frames[:, hole].std() > 0.05
    difference = (frames[:, :48, :320] - reference_frames[:, :48, :320]).abs().max().item()
    assert_measured(difference, 0.03, "abs, top rows")                      # measured 0.016 (random weights)
