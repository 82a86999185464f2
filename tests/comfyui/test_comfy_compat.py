"""The package keeps up with ComfyUI APIs newer than 0.3.75 by feature detection. Each path runs here:
on the running ComfyUI as it is, and where a code path exists only in newer releases, by calling the
package the way those releases do (their constructor defaults, their keywords, their factory calls,
their patcher class), as read from their sources (adapters/compat.py)."""
import pytest
import torch
from numerics import assert_relative

pytestmark = pytest.mark.slow

T2V = "diffusers/Allegro-tiny"


def load_model(comfy, name=T2V):
    return comfy.call("AllegroVideo_ModelLoader", model_name=name, weight_dtype="fp32")[0]


def load_vae(comfy, name=T2V):
    return comfy.call("AllegroVideo_VAELoader", vae_name=name, dtype="fp32")[0]


def frames(count=8, size=64, seed=0):
    torch.manual_seed(seed)
    return torch.rand(count, size, size, 3)


# --- comfy_sd.VAE ------------------------------------------------------------------------------

def test_vae_has_every_attribute_a_core_vae_has(comfy, tiny_models, caplog):
    from comfy import sd as comfy_sd
    # A real core VAE of this ComfyUI, the smallest it builds (TAESD), whatever attributes this release sets.
    core = comfy_sd.VAE(sd={"taesd_decoder.1.weight": torch.zeros(64, 4, 3, 3)})
    caplog.clear()
    ours = load_vae(comfy)
    assert "No VAE weights" not in caplog.text            # the constructor's warning about its empty input
    assert set(vars(core)) - set(vars(ours)) == set()
    # The defaults it takes from the constructor keep their meaning for a video VAE.
    assert (ours.latent_dim, ours.latent_channels, ours.not_video) == (3, 4, False)
    assert getattr(ours, "pad_channel_value", None) is None


def test_vae_takes_the_defaults_a_newer_constructor_sets(comfy, tiny_models, monkeypatch):
    """Newer releases' VAE constructor sets handles_tiling, format_encoded, audio_sample_rate (read by
    their decode/encode and nodes); the package's VAE takes whatever the running constructor sets."""
    from comfy import sd as comfy_sd
    original = comfy_sd.VAE.__init__

    def newer_constructor(self, sd=None, *args, **kwargs):
        self.handles_tiling, self.format_encoded, self.audio_sample_rate = False, None, 44100
        self.some_future_default = "set"
        return original(self, sd, *args, **kwargs)

    monkeypatch.setattr(comfy_sd.VAE, "__init__", newer_constructor)
    vae = load_vae(comfy)
    assert (vae.handles_tiling, vae.format_encoded, vae.audio_sample_rate, vae.some_future_default) == \
           (False, None, 44100, "set")
    assert vae.decode(torch.zeros(1, 4, 2, 8, 8)).shape == (1, 8, 64, 64, 3)


def test_vae_falls_back_to_known_defaults_if_the_constructor_refuses(comfy, tiny_models, monkeypatch):
    from comfy import sd as comfy_sd
    from importlib import import_module

    def refusing_constructor(self, sd=None, *args, **kwargs):
        raise RuntimeError("no weights")

    monkeypatch.setattr(comfy_sd.VAE, "__init__", refusing_constructor)
    vae = load_vae(comfy)
    fallback = import_module(type(vae).__module__).FALLBACK_DEFAULTS
    assert {name: getattr(vae, name) for name in fallback} == fallback
    latent = vae.encode(frames())
    assert latent.shape == (1, 4, 2, 8, 8)
    assert vae.decode(latent).shape == (1, 8, 64, 64, 3)


def test_encode_takes_not_video_as_newer_comfyui_passes_it(comfy, tiny_models):
    """encode(images, not_video=True), as newer ComfyUI passes it, encodes each image as a one-frame video, alike in a
    batch, one by one and tiled. Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike):
    batch vs one 2.4e-6 in every setting, tiled 0; bound 1e-5 (4.2x the largest)."""
    vae = load_vae(comfy)
    images = frames(count=3)
    as_video = vae.encode(images)
    assert as_video.shape == (1, 4, 1, 8, 8)                  # 3 frames, one latent frame
    assert torch.equal(vae.encode(images, not_video=False), as_video)
    as_images = vae.encode(images, not_video=True)            # each image a one-frame video
    assert as_images.shape == (3, 4, 1, 8, 8)
    for index in range(3):
        assert_relative(as_images[index:index + 1], vae.encode(images[index:index + 1]), 1e-5, "batch vs one")
    tiled = vae.encode_tiled(images, tile_x=64, tile_y=64, overlap=16, tile_t=8, overlap_t=4, not_video=True)
    assert_relative(tiled, as_images, 1e-5, "tiled")
    assert vae.encode_tiled(images, tile_x=64, tile_y=64, overlap=16).shape == (1, 4, 1, 8, 8)


# --- ModelPatcher: the patcher class, dynamic loading, the rebuild factory ------------------------

def fake_dynamic_patcher():
    """A stand-in for newer ComfyUI's ModelPatcherDynamic (needs comfy-aimdo and a GPU): it reports
    is_dynamic(), which is what decides how weights are loaded."""
    from comfy import model_patcher

    class DynamicPatcher(model_patcher.ModelPatcher):
        def is_dynamic(self):
            return True
    return DynamicPatcher


def test_models_use_the_core_patcher_class_and_load_weights_for_it(comfy, tiny_models, monkeypatch):
    """The models load through core's ModelPatcher class, and the weights it loads predict what the file's weights
    predict. Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 2.5e-7 .. 3.0e-7;
    bound 2e-6 (6.7x the largest)."""
    from comfy import model_patcher
    dynamic = fake_dynamic_patcher()
    monkeypatch.setattr(model_patcher, "CoreModelPatcher", dynamic, raising=False)
    model, vae = load_model(comfy), load_vae(comfy)
    assert type(model) is dynamic and type(vae.patcher) is dynamic
    plain = model_patcher.ModelPatcher
    factory, args = model.cached_patcher_init
    assert type(factory(*args, disable_dynamic=True)) is plain
    # Dynamic patchers get the weights assigned (no copy); the model computes as a plainly loaded one.
    # The weights are equal, but in other memory, where CPU kernels may sum in another order: measured
    # max |difference| 0 on ComfyUI 0.3.75 and 0.8.0, 2.9e-6 at max |output| 11 (2.6e-7 of it) on 0.33.0.
    x, context = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 16, 32)
    monkeypatch.undo()
    reference = load_model(comfy)
    with torch.no_grad():
        expected = reference.model.apply_model(x, torch.tensor([5.0]), c_crossattn=context)
        # Other memory (file-mapped vs copied) can pick other kernels: close, not bit-equal. Measured: 0 on
        # 0.3.75 and 0.8.0, 2.6e-7 relative on 0.33.0 (its loading path), under avx2 and avx512.
        assert_relative(model.model.apply_model(x, torch.tensor([5.0]), c_crossattn=context), expected, 2e-6)


def test_dynamic_patchers_keep_the_state_dicts_tensors(comfy, tiny_models):
    from comfy import model_patcher
    from importlib import import_module
    compat = import_module(type(load_vae(comfy)).__module__.rsplit(".", 1)[0] + ".compat")
    weights = {"weight": torch.randn(3, 2), "bias": torch.randn(3)}
    for patcher_class, shared in ((fake_dynamic_patcher(), True), (model_patcher.ModelPatcher, False)):
        module = torch.nn.Linear(2, 3)
        compat.load_weights(module, weights, patcher_class(module, torch.device("cpu"), torch.device("cpu")))
        assert torch.equal(module.weight, weights["weight"])
        assert (module.weight.data_ptr() == weights["weight"].data_ptr()) is shared


@pytest.mark.parametrize("name", [T2V, "allegro_tiny_ti2v.safetensors"])
def test_cached_patcher_init_rebuilds_the_model_from_its_files(comfy, tiny_models, name):
    """Newer ComfyUI's clone(force_deepcopy=True) and non-dynamic delegates call the factory as
    factory(*args, disable_dynamic=True); its multi-GPU deep clone as factory(*args).
    Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0 for both checkpoints (the
    same weights rebuilt); bound 1e-6."""
    from comfy import model_patcher
    patcher = load_model(comfy, name)
    factory, args = patcher.cached_patcher_init
    torch.manual_seed(3)
    channels = patcher.model.diffusion_model.config.input_channels
    x, context = torch.randn(1, channels, 2, 8, 8), torch.randn(1, 16, 32)
    with torch.no_grad():
        expected = patcher.model.diffusion_model(x, torch.tensor([500.0]), context)
    for rebuilt in (factory(*args, disable_dynamic=True), factory(*args)):
        assert isinstance(rebuilt, model_patcher.ModelPatcher)
        assert rebuilt.model is not patcher.model
        assert rebuilt.model.state_dict().keys() == patcher.model.state_dict().keys()
        assert rebuilt.cached_patcher_init == patcher.cached_patcher_init
        with torch.no_grad():
            assert_relative(rebuilt.model.diffusion_model(x, torch.tensor([500.0]), context), expected, 1e-6)


def test_vae_patcher_factory_rebuilds_the_vae(comfy, tiny_models):
    from comfy import model_patcher
    vae = load_vae(comfy, "allegro_tiny_vae.safetensors")
    factory, args = vae.patcher.cached_patcher_init
    rebuilt = factory(*args, disable_dynamic=True)
    assert isinstance(rebuilt, model_patcher.ModelPatcher) and rebuilt.model is not vae.first_stage_model
    original, fresh = vae.first_stage_model.state_dict(), rebuilt.model.state_dict()
    assert original.keys() == fresh.keys() and all(torch.equal(original[k], fresh[k]) for k in original)


def test_model_config_gets_the_load_device_where_it_takes_one(comfy, tiny_models, monkeypatch):
    """Newer ComfyUI's model configs take set_inference_dtype(dtype, manual_cast_dtype, device=...)."""
    from comfy import model_management, supported_models_base
    original = supported_models_base.BASE.set_inference_dtype
    devices = []

    def newer(self, dtype, manual_cast_dtype, device=None):
        devices.append(device)
        return original(self, dtype, manual_cast_dtype)

    monkeypatch.setattr(supported_models_base.BASE, "set_inference_dtype", newer)
    model = load_model(comfy)
    assert devices == [model_management.get_torch_device()] and model.model.get_dtype() == torch.float32


# --- LatentFormat --------------------------------------------------------------------------------

def test_latent_format_states_the_vae_compression(comfy, tiny_models):
    latent_format = load_model(comfy).model.latent_format
    vae = load_vae(comfy)
    assert latent_format.spacial_downscale_ratio == vae.spacial_compression_decode() == 8
    assert latent_format.temporal_downscale_ratio == vae.temporal_compression_decode() == 4
    assert latent_format.latent_channels == vae.latent_channels and latent_format.latent_dimensions == 3
