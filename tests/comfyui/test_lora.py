"""LoRAs on the Allegro DiT in the formats trainers write: ComfyUI keys and kohya keys through core
'LoraLoaderModelOnly' and through 'Load Allegro LoRA'; diffusers/PEFT keys (with and without alpha, with
each prefix PEFT and diffusers use) through 'Load Allegro LoRA'. The patched weights equal the weights
merged by hand (W + strength * alpha/rank * B @ A) to 1e-4 relative in fp32, for one LoRA, a strength,
and two stacked LoRAs; the patched model computes as a model loaded with the merged weights."""
import pytest
import torch
from safetensors.torch import save_file
from numerics import assert_measured, norm_relative

pytestmark = pytest.mark.slow

T2V = "diffusers/Allegro-tiny"
RANK = 4
# Linear layers of the tiny DiT (width 48, captions 32): self/cross attention, feed-forward, projections.
TARGETS = {"transformer_blocks.0.attn1.to_q": (48, 48), "transformer_blocks.1.attn2.to_k": (48, 48),
           "transformer_blocks.0.attn1.to_out.0": (48, 48), "transformer_blocks.1.ff.net.0.proj": (192, 48),
           "transformer_blocks.1.ff.net.2": (48, 192), "caption_projection.linear_1": (48, 32),
           "proj_out": (16, 48)}


def make_lora(seed: int, alpha: float | None):
    """{module: (down [rank, in], up [out, rank], alpha or None)}; up is not zero, as after training."""
    generator = torch.Generator().manual_seed(seed)
    return {module: (torch.randn(RANK, fan_in, generator=generator) * 0.1,
                     torch.randn(fan_out, RANK, generator=generator) * 0.1, alpha)
            for module, (fan_out, fan_in) in TARGETS.items()}


def in_format(lora: dict, layout: str) -> dict:
    """The LoRA's tensors named as each format names them."""
    tensors = {}
    for module, (down, up, alpha) in lora.items():
        if layout == "comfy":
            base, names = f"diffusion_model.{module}", ("lora_down.weight", "lora_up.weight")
        elif layout == "kohya":
            base, names = f"lora_unet_{module.replace('.', '_')}", ("lora_down.weight", "lora_up.weight")
        else:                                     # diffusers: "transformer.", PEFT: "base_model.model." or none
            base, names = f"{layout}{module}", ("lora_A.weight", "lora_B.weight")
        tensors[f"{base}.{names[0]}"], tensors[f"{base}.{names[1]}"] = down, up
        if alpha is not None:
            tensors[f"{base}.alpha"] = torch.tensor(alpha)
    return tensors


def merged(base: dict, *applied) -> dict:
    """base weights + Σ strength * alpha/rank * up @ down (alpha absent: scale 1, as ComfyUI and PEFT)."""
    out = {k: v.clone() for k, v in base.items()}
    for lora, strength in applied:
        for module, (down, up, alpha) in lora.items():
            scale = (alpha / RANK) if alpha is not None else 1.0
            out[f"diffusion_model.{module}.weight"] += strength * scale * (up @ down)
    return out


@pytest.fixture(scope="module")
def lora_files(base_dir):
    folder = base_dir / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    loras = {"first": make_lora(1, alpha=2.0), "second": make_lora(2, alpha=None)}
    names = {}
    for which, lora in loras.items():
        for layout in ("comfy", "kohya", "transformer.", "base_model.model.", ""):
            name = f"allegro_{which}_{layout.strip('.').replace('.', '_') or 'bare'}.safetensors"
            save_file(in_format(lora, layout), folder / name)
            names[which, layout] = name
    # A LoRA for another model: nothing in it names an Allegro module.
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8)},
              folder / "allegro_not_for_allegro.safetensors")
    return loras, names


def patched_weights(comfy, patcher) -> dict:
    """The weights ComfyUI computes when it loads the patched model (its own patching path)."""
    from comfy import model_management
    model_management.load_models_gpu([patcher])
    weights = {k: v.detach().clone() for k, v in patcher.model.state_dict().items() if k.startswith("diffusion_model.")}
    model_management.unload_all_models()
    return weights


def relative_error(actual: dict, expected: dict) -> float:
    return max(((actual[k] - expected[k]).norm() / expected[k].norm()).item() for k in expected)


@pytest.fixture(scope="module")
def base(comfy, tiny_models):
    patcher = comfy.call("AllegroVideo_ModelLoader", model_name=T2V, weight_dtype="fp32")[0]
    return patcher, patched_weights(comfy, patcher)


def load_allegro_lora(comfy, model, name, strength=1.0):
    return comfy.call("AllegroVideo_LoraLoader", model=model, lora_name=name, strength_model=strength)[0]


def load_core_lora(comfy, model, name, strength=1.0):
    return comfy.call("LoraLoaderModelOnly", model=model, lora_name=name, strength_model=strength)[0]


@pytest.mark.parametrize("layout", ["comfy", "kohya", "transformer.", "base_model.model.", ""])
@pytest.mark.parametrize("which,strength", [("first", 1.0), ("second", 0.6)])
def test_every_format_equals_the_merged_weights(comfy, base, lora_files, layout, which, strength):
    """Each key format of the same LoRA (diffusers, PEFT prefixes, ComfyUI, kohya) at strength 1.0 and 0.6 patches the
    weights to the merged weights. Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike):
    0 in every case (largest norm-relative weight error); bound 1e-4."""
    patcher, weights = base
    loras, names = lora_files
    expected = merged(weights, (loras[which], strength))
    got = patched_weights(comfy, load_allegro_lora(comfy, patcher, names[which, layout], strength))
    assert got.keys() == expected.keys()
    assert_measured(relative_error(got, expected), 1e-4)
    # Untouched layers stay as they were.
    untouched = [k for k in weights if not any(k == f"diffusion_model.{m}.weight" for m in TARGETS)]
    assert all(torch.equal(got[k], weights[k]) for k in untouched)


@pytest.mark.parametrize("layout", ["comfy", "kohya"])
def test_core_lora_loader_reads_comfy_and_kohya_keys(comfy, base, lora_files, layout):
    """Core LoraLoaderModelOnly reads the ComfyUI and kohya key files to the merged weights. Measured spread
    (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0 for both; bound 1e-4."""
    patcher, weights = base
    loras, names = lora_files
    got = patched_weights(comfy, load_core_lora(comfy, patcher, names["first", layout], 0.8))
    assert_measured(relative_error(got, merged(weights, (loras["first"], 0.8))), 1e-4)


def test_two_stacked_loras_add_up(comfy, base, lora_files):
    """Two LoRAs stacked (two Allegro loaders, or Allegro then core) patch the weights to both merged. Measured spread
    (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0 and 0; bound 1e-4."""
    patcher, weights = base
    loras, names = lora_files
    once = load_allegro_lora(comfy, patcher, names["first", "transformer."], 0.7)
    twice = load_allegro_lora(comfy, once, names["second", "kohya"], -0.4)
    expected = merged(weights, (loras["first"], 0.7), (loras["second"], -0.4))
    assert_measured(relative_error(patched_weights(comfy, twice), expected), 1e-4, "two Allegro loaders")
    # Core's loader stacks on the package's (both patch through ComfyUI): the same sum.
    mixed = load_core_lora(comfy, load_allegro_lora(comfy, patcher, names["first", ""], 0.7), names["second", "comfy"], -0.4)
    assert_measured(relative_error(patched_weights(comfy, mixed), expected), 1e-4, "Allegro then core loader")
    # Each node returns a new model: the input model is unchanged.
    assert relative_error(patched_weights(comfy, patcher), weights) == 0.0


def test_patched_model_computes_as_the_merged_model(comfy, base, lora_files):
    """The model patched with a LoRA predicts what the model with the LoRA merged into its weights predicts. Measured
    spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0 (norm-relative); bound 1e-5."""
    patcher, weights = base
    loras, names = lora_files
    with_lora = load_allegro_lora(comfy, patcher, names["first", "transformer."], 0.9)
    reference = comfy.call("AllegroVideo_ModelLoader", model_name=T2V, weight_dtype="fp32")[0]
    reference.model.load_state_dict(merged(weights, (loras["first"], 0.9)), strict=False)
    torch.manual_seed(4)
    x, context = torch.randn(1, 4, 2, 8, 8) * 10, torch.randn(1, 16, 32)
    sigma = torch.tensor([6.0])
    from comfy import model_management
    with torch.no_grad():
        expected = reference.model.apply_model(x, sigma, c_crossattn=context)
        model_management.load_models_gpu([with_lora])
        actual = with_lora.model.apply_model(x, sigma, c_crossattn=context)
    model_management.unload_all_models()
    assert_measured(norm_relative(actual, expected), 1e-5)
    plain = patcher.model
    model_management.load_models_gpu([patcher])
    with torch.no_grad():
        assert not torch.allclose(plain.apply_model(x, sigma, c_crossattn=context), expected)
    model_management.unload_all_models()


def test_strength_zero_returns_the_model_and_foreign_loras_are_refused(comfy, base, lora_files):
    patcher, _ = base
    _, names = lora_files
    assert load_allegro_lora(comfy, patcher, names["first", "kohya"], 0.0) is patcher
    with pytest.raises(ValueError, match="no tensor for the Allegro transformer"):
        load_allegro_lora(comfy, patcher, "allegro_not_for_allegro.safetensors")


def wider(lora: dict, factor: int = 2) -> dict:
    """The same layers at `factor` times the width: a LoRA made for a larger Allegro model."""
    return {module: (down.repeat(1, factor), up.repeat(factor, 1), alpha) for module, (down, up, alpha) in lora.items()}


@pytest.fixture(scope="module")
def mismatched_loras(base_dir, lora_files):
    loras, _ = lora_files
    folder = base_dir / "models" / "loras"
    other_width = in_format(wider(loras["first"]), "transformer.")
    save_file(other_width, folder / "allegro_other_width.safetensors")
    # Half right: the layers of block 0 from this model, the rest made for the wider one, plus names of no layer.
    half = {**in_format(wider(loras["first"]), "transformer."),
            **in_format({m: v for m, v in loras["first"].items() if m.startswith("transformer_blocks.0.")}, "transformer."),
            "transformer.transformer_blocks.7.attn1.to_q.lora_A.weight": torch.zeros(RANK, 48)}
    save_file(half, folder / "allegro_half_right.safetensors")
    return {"other width": len(other_width), "half right": len(half)}


def test_a_lora_made_for_another_width_is_refused_naming_the_sizes(comfy, base, mismatched_loras):
    patcher, _ = base
    with pytest.raises(ValueError) as error:
        load_allegro_lora(comfy, patcher, "allegro_other_width.safetensors")
    message = str(error.value)
    assert f"None of the {mismatched_loras['other width']} tensors of allegro_other_width.safetensors fits" in message
    assert "have other sizes" in message and "Nothing was applied" in message, message


def test_a_lora_that_fits_only_in_part_says_how_much_was_applied(comfy, base, lora_files, mismatched_loras, caplog):
    """A LoRA whose tensors fit only in part applies those that fit, says how many, and patches exactly block 0's part.
    Measured spread (default/avx2/avx512 × 1/2 threads): 0 in every setting (largest norm-relative weight error);
    bound 1e-4, as the other LoRA tests."""
    patcher, weights = base
    loras, _ = lora_files
    with caplog.at_level("WARNING"):
        patched = load_allegro_lora(comfy, patcher, "allegro_half_right.safetensors")
    warning = next(r.getMessage() for r in caplog.records if "allegro_half_right.safetensors: applied" in r.getMessage())
    block0 = {m: v for m, v in loras["first"].items() if m.startswith("transformer_blocks.0.")}
    # down, up and alpha of each of block 0's layers
    assert f"applied {3 * len(block0)} of its {mismatched_loras['half right']} tensors" in warning, warning
    assert "1 name no layer of this model" in warning and "have other sizes" in warning, warning
    # What was applied is exactly block 0's part.
    assert_measured(relative_error(patched_weights(comfy, patched), merged(weights, (block0, 1.0))), 1e-4,
                    "block 0's part")


def test_a_model_file_picked_as_a_lora_is_named_as_such(comfy, base, tiny_models, base_dir):
    import shutil
    patcher, _ = base
    target = base_dir / "models" / "loras" / "allegro_dit_as_lora.safetensors"
    shutil.copy2(tiny_models["t2v_file"], target)
    with pytest.raises(ValueError, match="holds a model's own weights .* not a LoRA's adapter tensors"):
        load_allegro_lora(comfy, patcher, target.name)
