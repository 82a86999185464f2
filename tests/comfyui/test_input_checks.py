"""Hostile input below the server: config ranges, weights of the wrong kind or with NaN, reads
confined to the model folders, bounded schedules, numbers checked at the nodes, memory preflight on
the memory actually available. (The same classes through /prompt: test_error_matrix.py.)"""
import math

import pytest
import torch
from safetensors.torch import save_file

from allegro.checkpoint_kinds import CheckpointError
from allegro.checkpoints import read_checkpoint, read_safetensors
from allegro.config import (RELEASE_TRANSFORMER, RELEASE_VAE, decide_latent_scale, decide_transformer_config,
                            decide_vae_config)
from allegro.schedule import MAX_SCHEDULE_STEPS, linspace_schedule, schedule_length, training_sigmas
from allegro.tensor_checks import all_finite

TINY_DIT = dict(num_attention_heads=2, attention_head_dim=24, num_layers=2, cross_attention_dim=48, caption_channels=32,
                sample_frames=6, sample_height=20, sample_width=20)
TINY_VAE = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                sample_size=160)


@pytest.fixture(scope="module")
def dit_weights():
    from diffusers import AllegroTransformer3DModel
    with torch.device("meta"):
        return AllegroTransformer3DModel(**TINY_DIT).state_dict()


@pytest.fixture(scope="module")
def vae_weights():
    from diffusers import AutoencoderKLAllegro
    with torch.device("meta"):
        return AutoencoderKLAllegro(**TINY_VAE).state_dict()


# --- config ranges (allegro/config.py) ----------------------------------------------------------

DIT_CONFIG = {"_class_name": "AllegroTransformer3DModel", **TINY_DIT,
              "interpolation_scale_t": 2.2, "interpolation_scale_h": 2.0, "interpolation_scale_w": 2.0}


@pytest.mark.parametrize("change, expect", [
    ({"interpolation_scale_h": 0}, "interpolation_scale_h must be a finite number above 0, got 0"),
    ({"interpolation_scale_t": -1.0}, "interpolation_scale_t must be a finite number above 0"),
    ({"interpolation_scale_w": math.nan}, "interpolation_scale_w must be a finite number above 0, got nan"),
    ({"interpolation_scale_w": "2"}, "interpolation_scale_w must be a finite number above 0, got '2'"),
    ({"num_attention_heads": 2.5, "attention_head_dim": 19.2}, "num_attention_heads must be a whole number"),
    ({"num_attention_heads": -2, "attention_head_dim": -24}, "num_attention_heads must be a whole number from 1"),
    ({"num_attention_heads": True}, "num_attention_heads must be a whole number"),
    ({"norm_eps": 0}, "norm_eps must be a finite number above 0"),
    ({"sample_size_t": 10 ** 12}, "sample_frames must be a whole number from 1 to 65536, got 1000000000000"),
    ({"sample_height": "20"}, "sample_height must be a whole number"),
    ({"attention_head_dim": 20, "num_attention_heads": 2.4}, "num_attention_heads must be a whole number"),
])
def test_transformer_configs_out_of_range_are_refused_naming_file_and_setting(dit_weights, change, expect):
    with pytest.raises(CheckpointError) as error:
        decide_transformer_config(dit_weights, "allegro_t2v", {**DIT_CONFIG, **change}, "dit/config.json")
    assert str(error.value).startswith("dit/config.json: ") and expect in str(error.value)


def test_the_release_configs_and_the_tests_pass_the_range_checks(dit_weights):
    RELEASE_TRANSFORMER.validate() and RELEASE_VAE.validate()
    assert decide_transformer_config(dit_weights, "allegro_t2v", DIT_CONFIG, "dit").num_attention_heads == 2


@pytest.mark.parametrize("change, expect", [
    ({"norm_num_groups": 3}, "norm_num_groups=3 does not divide the channel counts [8, 8, 16, 16]"),
    ({"norm_num_groups": 0}, "norm_num_groups must be a whole number from 1"),
    ({"scaling_factor": 0}, "scaling_factor must be a finite number above 0"),
    ({"scale_factor": math.inf}, "scaling_factor must be a finite number above 0, got inf"),
    ({"sample_size": 10 ** 9}, "sample_size must be a whole number from 8 to 65536"),
    ({"tile_overlap": [-120, 80]}, "tile_overlap must be a list of whole numbers from 0"),
    ({"tile_overlap": 7}, "tile_overlap / t_over / sample_size are malformed"),
    ({"chunk_len": 2.5}, "tile_frames must be a whole number"),
])
def test_vae_configs_out_of_range_are_refused_naming_file_and_setting(vae_weights, change, expect):
    with pytest.raises(CheckpointError) as error:
        decide_vae_config(vae_weights, {**TINY_VAE, **change}, "vae/config.json")
    assert str(error.value).startswith("vae/config.json: ") and expect in str(error.value)


def test_a_companion_vae_scale_must_be_finite():
    with pytest.raises(CheckpointError, match="scaling_factor must be a finite number above 0, got nan"):
        decide_latent_scale({"scaling_factor": math.nan})


# --- weights of the wrong kind, weights with NaN (allegro/tensor_checks.py) ------------------------

@pytest.mark.parametrize("dtype, kind", [(torch.int64, "integer"), (torch.int8, "integer"), (torch.uint8, "unsigned"),
                                         (torch.bool, "boolean"), (torch.int32, "integer")])
def test_integer_and_boolean_tensors_are_refused_before_loading(tmp_path, dtype, kind):
    path = tmp_path / "weights.safetensors"
    save_file({"a.weight": torch.ones(4, 4), "proj_out.weight": torch.ones(3, 3).to(dtype)}, str(path))
    with pytest.raises(CheckpointError) as error:
        read_safetensors(path)
    assert f"{path}: tensor 'proj_out.weight' holds {kind}" in str(error.value)
    assert "floating-point" in str(error.value)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float16, torch.float64])
def test_floating_weights_fp8_included_are_read(tmp_path, dtype):
    path = tmp_path / "weights.safetensors"
    save_file({"a.weight": torch.randn(8, 8).to(dtype), "a.scale_weight": torch.ones(1)}, str(path))
    weights, _ = read_safetensors(path)
    assert weights["a.weight"].dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e5m2, torch.float8_e4m3fn])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinite_weights_are_refused_naming_the_tensor(tmp_path, dtype, bad):
    if dtype == torch.float8_e4m3fn and math.isinf(bad):
        bad = math.nan                                   # e4m3fn has no infinity (it saturates to NaN)
    values = torch.randn(64, 64)
    values[3, 5] = bad
    path = tmp_path / "weights.safetensors"
    save_file({"fine.weight": torch.randn(4), "broken.weight": values.to(dtype)}, str(path))
    with pytest.raises(CheckpointError, match=r"tensor 'broken.weight' holds 1 NaN or infinite values \(of 4096\)"):
        read_safetensors(path)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_the_fp8_byte_check_is_exact_for_every_byte(dtype):
    for byte in range(256):
        tensor = torch.tensor([0x10, byte, 0x01], dtype=torch.uint8).view(dtype)
        assert all_finite(tensor) == bool(torch.isfinite(tensor.float()).all()), hex(byte)


def test_the_finite_check_is_exact_where_a_sum_overflows():
    large = torch.full((1000, 100), 60000.0, dtype=torch.float16)      # finite, but its fp16 sum is inf
    assert not torch.isfinite(large.sum()) and all_finite(large)
    large[7, 7] = math.inf
    assert not all_finite(large)
    assert all_finite(torch.empty(0))


# --- reads confined to the model folders (allegro/checkpoints.py) -------------------------------------

def test_links_out_of_the_allowed_folders_are_refused_without_naming_their_target(tmp_path):
    models, outside = tmp_path / "models", tmp_path / "elsewhere_SECRET"
    (models / "diffusion_models").mkdir(parents=True)
    outside.mkdir()
    save_file({"w": torch.ones(2)}, str(outside / "real.safetensors"))
    link = models / "diffusion_models" / "link.safetensors"
    link.symlink_to(outside / "real.safetensors")
    assert read_checkpoint(link, "transformer").weights["w"].sum() == 2        # unconfined: read
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(link, "transformer", inside=[models / "diffusion_models"])
    assert "link that leads outside ComfyUI's model folders" in str(error.value)
    assert "SECRET" not in str(error.value) and str(link) in str(error.value)
    # A link from one model folder into another, or a model folder that is itself a link, is inside.
    (models / "vae").mkdir()
    (models / "vae" / "shared.safetensors").symlink_to(link.parent / "real_copy.safetensors")
    save_file({"w": torch.ones(3)}, str(link.parent / "real_copy.safetensors"))
    linked_folder = tmp_path / "linked_models"
    linked_folder.symlink_to(models / "diffusion_models", target_is_directory=True)
    assert read_checkpoint(models / "vae" / "shared.safetensors", "vae",
                           inside=[models / "vae", models / "diffusion_models"]).weights["w"].sum() == 3
    assert read_checkpoint(linked_folder / "real_copy.safetensors", "vae", inside=[linked_folder]).weights["w"].sum() == 3


def test_a_hub_folder_with_a_link_outside_is_refused_and_its_target_never_listed(tmp_path):
    base, outside = tmp_path / "diffusers", tmp_path / "outside"
    (base / "Model").mkdir(parents=True)
    (outside / "transformer").mkdir(parents=True)
    (outside / "transformer" / "SECRET_FILE.txt").write_text("x")
    (base / "Model" / "model_index.json").write_text("{}")
    (base / "Model" / "transformer").symlink_to(outside / "transformer", target_is_directory=True)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(base / "Model", "transformer", inside=[base])
    assert "leads outside" in str(error.value) and "SECRET" not in str(error.value)


# --- bounded schedules (allegro/schedule.py) ----------------------------------------------------------

def test_schedules_are_bounded_with_what_to_change():
    assert schedule_length(20, 0.5) == 40 and schedule_length(100, 1.0) == 100
    assert schedule_length(100, 0.01) == MAX_SCHEDULE_STEPS
    for denoise in (1e-7, 1e-300, 5e-324):
        with pytest.raises(ValueError, match=r"at most 10000 are allowed\. Raise denoise to at least 0\.1"):
            schedule_length(1000, denoise)
    with pytest.raises(ValueError, match="steps must be from 1 to 10000"):
        linspace_schedule(10 ** 8, training_sigmas())


# --- nodes: numbers where they enter, memory actually available (in-process ComfyUI) ------------------

@pytest.mark.slow
@pytest.mark.parametrize("node, inputs, expect", [
    ("AllegroVideo_Sampler", {"cfg": math.nan}, "'Allegro Sampler' got cfg = nan: it must be a finite number"),
    ("AllegroVideo_Sampler", {"denoise": math.nan}, "got denoise = nan: it must be a finite number from 0 to 1"),
    ("AllegroVideo_Sampler", {"cfg": math.inf}, "got cfg = inf"),
    ("AllegroVideo_Sampler", {"steps": 2.5}, "got steps = 2.5: it must be a whole number from 1 to 10000"),
    ("AllegroVideo_Sampler", {"seed": -1}, "got seed = -1: it must be a whole number from 0"),
    ("AllegroVideo_StepCache", {"threshold": math.nan}, "'Allegro Step Cache' got threshold = nan"),
    ("AllegroVideo_StepCache", {"end": math.inf}, "got end = inf: it must be a finite number from 0 to 1"),
    ("AllegroVideo_EmptyLatentVideo", {"width": math.nan}, "width must be a whole number, got nan"),
    ("AllegroVideo_EmptyLatentVideo", {"length": "88"}, "length must be a whole number, got '88'"),
])
def test_numbers_are_checked_where_they_enter(comfy, node, inputs, expect):
    defaults = {
        "AllegroVideo_Sampler": dict(model=None, positive=[], negative=[], latent={"samples": torch.zeros(1, 4, 2, 8, 8)},
                                     seed=1, steps=2, cfg=7.5, sampler_name="euler", scheduler="normal",
                                     noise_stream="reference", denoise=1.0),
        "AllegroVideo_StepCache": dict(model=None, threshold=0.1, start=0.1, end=0.9),
        "AllegroVideo_EmptyLatentVideo": dict(width=64, height=64, length=8, batch_size=1),
    }[node]
    with pytest.raises(ValueError) as error:
        comfy.call(node, **{**defaults, **inputs})
    assert expect in str(error.value)


GIB = 1024 ** 3


def package_module(name: str):
    """A module of this package as ComfyUI loaded it (its custom-node module name is the folder's)."""
    import sys
    return next(module for key, module in sys.modules.items() if key.endswith(f".{name}") and "Allegro" in key)


@pytest.fixture()
def free_ram(monkeypatch):
    """Set how much RAM psutil reports as available (64 GiB in total)."""
    import psutil
    real = psutil.virtual_memory()

    def set_free(gib: float):
        monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(total=64 * GIB, available=int(gib * GIB)))
    return set_free


@pytest.mark.slow
def test_the_frames_preflight_uses_free_ram_not_total(comfy, free_ram):
    free_ram(1)
    with pytest.raises(ValueError) as error:
        comfy.call("AllegroVideo_EmptyLatentVideo", width=1280, height=720, length=88, batch_size=1)
    assert "1 x 88 frames of 1280x720 would need about 2.7 GiB of RAM" in str(error.value)
    assert "1.0 GiB of RAM are free" in str(error.value)
    free_ram(4)
    latent = comfy.call("AllegroVideo_EmptyLatentVideo", width=1280, height=720, length=88, batch_size=1)[0]
    assert latent["samples"].shape == (1, 4, 22, 90, 160)


@pytest.mark.slow
def test_the_sampling_preflight_counts_tokens_cfg_and_the_attention_in_use(comfy, free_ram, monkeypatch):
    import comfy.ldm.modules.attention as attention
    memory = package_module("adapters.memory")
    model = comfy.call("AllegroVideo_ModelLoader", model_name="diffusers/Allegro-tiny", weight_dtype="fp32")[0]
    release_latent = (1, 4, 22, 90, 160)                   # 88 x 720 x 1280: 79,200 tokens
    free_ram(8)
    with pytest.raises(ValueError) as error:
        memory.check_sampling_fits(model, release_latent, cfg=7.5)
    message = str(error.value)
    assert "1 x 88 frames of 1280x720 is 79200 tokens" in message and "2 passes per step with CFG, float32" in message
    assert "need about 11.1 GiB, and 8.0 GiB of RAM are free" in message and "Lower the length or the size" in message
    memory.check_sampling_fits(model, release_latent, cfg=1.0)               # one pass: 5.6 GiB
    # An attention that stores the whole matrix needs tokens^2 per head: far more.
    monkeypatch.setattr(attention, "optimized_attention", attention.attention_basic)
    with pytest.raises(ValueError, match=r"1 pass per step, float32\) need about \d{2,}\.\d GiB"):
        memory.check_sampling_fits(model, release_latent, cfg=1.0)
    # The sampler runs the check before sampling.
    free_ram(0.001)
    with pytest.raises(ValueError, match="tokens per video for the DiT"):
        comfy.call("AllegroVideo_Sampler", model=model, positive=[], negative=[],
                   latent={"samples": torch.zeros(1, 4, 2, 8, 8)}, seed=1, steps=2, cfg=7.5, sampler_name="euler",
                   scheduler="normal", noise_stream="reference", denoise=1.0)


@pytest.mark.slow
def test_gpu_memory_counts_free_vram_and_models_comfy_can_unload(comfy, monkeypatch):
    import comfy.model_management as mm
    memory = package_module("adapters.memory")
    gpu, other = torch.device("cuda", 0), torch.device("cuda", 1)

    class Loaded:
        def __init__(self, device, size):
            self.device, self.size = device, size

        def model_loaded_memory(self):
            return self.size

    monkeypatch.setattr(mm, "get_free_memory", lambda device=None, torch_free_too=False: 3 * GIB)
    monkeypatch.setattr(mm, "current_loaded_models", [Loaded(gpu, 5 * GIB), Loaded(other, 7 * GIB)])
    available, counted = memory.available_on(gpu)
    assert available == 8 * GIB and "cuda:0 memory are free or held by models ComfyUI can unload" in counted


@pytest.mark.slow
@pytest.mark.parametrize("name, says", [
    ("../x.safetensors", "goes up a folder"), ("sub/../../x.safetensors", "goes up a folder"),
    ("diffusers/../../x", "goes up a folder"), ("/etc/passwd", "is an absolute path"),
    ("diffusers//etc", "is an absolute path"), ("C:\\models\\x.safetensors", "is an absolute path"),
    ("\\\\server\\share\\x.safetensors", "is an absolute path"), ("a\x00b.safetensors", "contains a NUL"),
    ("", "is empty"), ("diffusers/", "is empty"), (["x"], "must be text"), (None, "must be text"),
    ("x" * 5000 + ".safetensors", "is not a file in ComfyUI's model folders"),
])
def test_names_that_leave_the_model_folders_are_refused_before_the_disk_is_read(comfy, name, says):
    sources = package_module("adapters.sources")
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        sources.resolve(name, "diffusion_models")
    assert says in str(error.value)


@pytest.mark.slow
def test_a_models_folder_registered_through_a_link_is_inside(comfy, tmp_path, tiny_models):
    """As extra_model_paths.yaml registers it: a folder elsewhere, here reached through a link."""
    import shutil
    import folder_paths
    sources = package_module("adapters.sources")
    elsewhere = tmp_path / "big_disk" / "diffusion_models"
    elsewhere.mkdir(parents=True)
    shutil.copy2(tiny_models["t2v_file"], elsewhere / "extra_dit.safetensors")
    linked = tmp_path / "linked_models"
    linked.symlink_to(elsewhere, target_is_directory=True)
    folder_paths.add_model_folder_path("diffusion_models", str(linked))
    try:
        assert sources.resolve("extra_dit.safetensors", "diffusion_models") == linked / "extra_dit.safetensors"
        assert "pos_embed.proj.weight" in sources.read("extra_dit.safetensors", "diffusion_models", "transformer").weights
    finally:
        folder_paths.folder_names_and_paths["diffusion_models"][0].remove(str(linked))
    with pytest.raises(FileNotFoundError):
        sources.resolve("extra_dit.safetensors", "diffusion_models")
