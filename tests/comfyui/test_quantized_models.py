"""Quantised Allegro models through the real ComfyUI: width-768 checkpoints converted by
scripts/convert_weights.py load through 'Load Allegro Model' (GGUF from models/diffusion_models/,
scaled fp8), stay quantised in memory, predict what the fp32 model predicts within each format's
quantisation error, sample through the graphs, and take LoRAs (core LoraLoaderModelOnly) on the
dequantised weights, equal to the LoRA on the fp32 model within the quantisation error."""
import pytest
import torch

from allegro.quantization import FP8_SCALED
from allegro_devtools.graphs import run_t2v, t2v_graph
from numerics import assert_relative, max_relative, record

pytestmark = pytest.mark.slow

FORMATS = ("Q8_0", "Q6_K", "Q5_K", "Q4_K", FP8_SCALED)
# Largest relative deviation of the prediction from the fp32 model's on this random-weight model
# (measured: Q8_0 0.0012, Q6_K 0.005, Q5_K 0.010, Q4_K 0.019, fp8 0.0067); the bounds allow ~3x.
TOLERANCE = {"Q8_0": 0.005, "Q6_K": 0.015, "Q5_K": 0.03, "Q4_K": 0.06, FP8_SCALED: 0.02}
LORA_NAME = "allegro_test_lora.safetensors"


def load(comfy, name, dtype="fp32"):
    return comfy.call("AllegroVideo_ModelLoader", model_name=name, weight_dtype=dtype)[0]


def inputs(seed=0, ti2v=False):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 2, 8, 8, generator=generator) * 20
    context = torch.randn(2, 16, 32, generator=generator)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, 6:] = 0
    extra = {}
    if ti2v:
        extra["c_concat"] = torch.randn(2, 8, 2, 8, 8, generator=generator)
    return x, context, mask, extra


def predict(patcher, seed=0, sigma=100.0):
    """The denoised prediction of a loaded model (ComfyUI loads it, with its patches, first)."""
    from comfy import model_management
    model_management.load_models_gpu([patcher])
    x, context, mask, extra = inputs(seed, patcher.model.is_ti2v)
    with torch.no_grad():
        return patcher.model.apply_model(x, torch.tensor([sigma, sigma]), c_crossattn=context, attention_mask=mask,
                                         **extra)


def relative(a, b) -> float:
    """Largest difference over the largest value, recorded for the spread table (tests/support/numerics.py)."""
    value = max_relative(a, b)
    record(value)
    return value


def first_linear(patcher):
    return patcher.model.diffusion_model.transformer_blocks[0].attn1.to_q


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_quantised_and_predicts_within_its_error(comfy, quantized_models, fmt):
    """Each format loads quantised (GGUF as uint8 blocks, scaled fp8) and predicts what the fp32 model predicts within
    its quantisation error. Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): Q8_0
    1.2e-3, Q6_K 4.1e-3, Q5_K 9.2e-3, Q4_K 1.9e-2, fp8_scaled 6.7e-3, each the same in every setting (the
    quantisation sets them, not the kernels); bounds TOLERANCE, 3.0x to 4.0x these."""
    from comfy import model_patcher
    names = quantized_models["t2v"]
    assert names[fmt] in comfy.node_types["AllegroVideo_ModelLoader"].define_schema().inputs[0].options
    exact = predict(load(comfy, names["fp32"]))
    model = load(comfy, names[fmt])
    layer = first_linear(model)
    assert layer.weight_format == fmt
    assert layer.weight.dtype == (torch.float8_e4m3fn if fmt == FP8_SCALED else torch.uint8)
    assert type(model).__name__ == "QuantizedModelPatcher" and isinstance(model, model_patcher.ModelPatcher)
    # The embeddings the file keeps unquantised load as ordinary weights in the chosen dtype.
    assert model.model.diffusion_model.adaln_single.linear.weight.dtype == torch.float32
    error = relative(predict(model), exact)
    assert error <= TOLERANCE[fmt], f"{fmt}: {error:.4f}"


def test_memory_follows_the_format(comfy, quantized_models):
    names = quantized_models["t2v"]
    sizes = {fmt: load(comfy, names[fmt], "bf16").model_size() for fmt in ("Q4_K", "Q5_K", "Q6_K", "Q8_0")}
    sizes["bf16"] = load(comfy, names["fp32"], "bf16").model_size()
    assert sizes["Q4_K"] < sizes["Q5_K"] < sizes["Q6_K"] < sizes["Q8_0"] < sizes["bf16"]


def test_ti2v_converts_with_its_branches(comfy, quantized_models):
    """The TI2V checkpoint converts with its image branches and predicts within each format's quantisation error.
    Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 2.7e-3 in every setting (the
    larger of Q4_K and fp8_scaled); bounds TOLERANCE: 0.06 (Q4_K), 0.02 (fp8_scaled)."""
    names = quantized_models["ti2v"]
    exact = predict(load(comfy, names["fp32"]))
    for fmt, tolerance in (("Q4_K", TOLERANCE["Q4_K"]), (FP8_SCALED, TOLERANCE[FP8_SCALED])):
        model = load(comfy, names[fmt])
        assert model.model.is_ti2v and model.model.diffusion_model.config.rope_shares_equal_lengths
        assert relative(predict(model), exact) <= tolerance


@pytest.mark.parametrize("fmt", ("Q4_K", FP8_SCALED))
def test_quantised_models_sample_through_the_graph(comfy, tiny_models, quantized_models, fmt):
    """Three ancestral steps through the T2V graph: the quantised model's latent is the fp32 model's within twice its
    quantisation error. Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): Q4_K 3.0e-2
    (bound 0.12, 4.0x), fp8_scaled 2.0e-2 (bound 0.04, 2.0x), each the same in every setting."""
    exact, _ = run_t2v(comfy, t2v_graph(quantized_models["t2v"]["fp32"]))
    latent, frames = run_t2v(comfy, t2v_graph(quantized_models["t2v"][fmt]))
    assert frames.shape == (8, 64, 64, 3) and torch.isfinite(frames).all()
    # Three ancestral steps from the same noise: the quantised model's video is the fp32 one's, nearly.
    assert relative(latent, exact) <= 2 * TOLERANCE[fmt]


def test_quantised_ti2v_runs_the_shipped_workflow(comfy, base_dir, tiny_models, quantized_models):
    """workflows/allegro_ti2v.json on the tiny VAE and T5 at 240x240x24, with the Q4_K TI2V transformer."""
    import numpy as np
    from PIL import Image
    from allegro_devtools.workflow_api import workflow_to_prompt
    from allegro_devtools.workflow_check import WORKFLOW_DIR, load_workflow, tiny_prompt
    Image.fromarray(np.linspace(0, 255, 240 * 320 * 3).reshape(240, 320, 3).astype(np.uint8)).save(
        base_dir / "input" / "quantised_first.png")
    graph = tiny_prompt(workflow_to_prompt(load_workflow(WORKFLOW_DIR / "allegro_ti2v.json"), comfy.object_info()),
                        "quantised_first.png")
    loader = next(node for node in graph.values() if node["class_type"] == "AllegroVideo_ModelLoader")
    loader["inputs"]["model_name"] = quantized_models["ti2v"]["Q4_K"]
    decode = next(key for key, node in graph.items() if node["class_type"] == "AllegroVideo_VAEDecode")
    result = comfy.run(graph, targets=[decode])
    assert result.status == "success", result.error
    frames = result.output(decode)
    assert frames.shape == (24, 240, 240, 3) and torch.isfinite(frames).all()


# --- LoRA ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_file(base_dir, quantized_models):
    """A rank-4 LoRA on every attention and MLP weight of both blocks, in ComfyUI's key format, whose
    effect on the prediction is well above the quantisation error."""
    from safetensors.torch import save_file
    generator = torch.Generator().manual_seed(21)
    tensors = {}
    layers = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0",
              "ff.net.0.proj", "ff.net.2")
    shapes = {"ff.net.0.proj": (3072, 768), "ff.net.2": (768, 3072)}
    for block in range(2):
        for layer in layers:
            out_features, in_features = shapes.get(layer, (768, 768))
            key = f"diffusion_model.transformer_blocks.{block}.{layer}"
            tensors[f"{key}.lora_down.weight"] = torch.randn(4, in_features, generator=generator) * 0.1
            tensors[f"{key}.lora_up.weight"] = torch.randn(out_features, 4, generator=generator) * 0.1
            tensors[f"{key}.alpha"] = torch.tensor(4.0)
    folder = base_dir / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / LORA_NAME)
    return LORA_NAME


def with_lora(comfy, model):
    return comfy.call("LoraLoaderModelOnly", model=model, lora_name=LORA_NAME, strength_model=1.0)[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_lora_on_quantised_weights_equals_lora_on_fp32_within_the_quantisation_error(comfy, quantized_models, lora_file,
                                                                                      fmt):
    """Core's LoRA on the dequantised weights equals the LoRA on the fp32 model within the quantisation error, and the
    stored bytes never change. Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): the
    table's row (2.71e-1 in every format and setting) is the largest of the three values recorded, the LoRA's own
    effect; the checked error is bounded by max(2 x the format's quantisation error, TOLERANCE)."""
    names = quantized_models["t2v"]
    exact_base = load(comfy, names["fp32"])
    exact, exact_lora = predict(exact_base), predict(with_lora(comfy, exact_base))
    base = load(comfy, names[fmt])
    stored = first_linear(base).weight.detach().clone()
    quantised = predict(base)
    patched = with_lora(comfy, base)
    quantised_lora = predict(patched)
    lora_effect = relative(exact_lora, exact)
    quantisation_error = relative(quantised, exact)
    error = relative(quantised_lora, exact_lora)
    assert lora_effect > 10 * quantisation_error, "the LoRA must change the prediction far more than quantisation"
    assert error <= max(2 * quantisation_error, TOLERANCE[fmt]), (fmt, error, quantisation_error)
    # Applied to the dequantised weight as the layer runs: the stored bytes never change.
    assert first_linear(patched).lora_patches is not None
    assert torch.equal(first_linear(patched).weight, stored)
    # Loading the model without the LoRA again removes it.
    assert torch.equal(predict(base), quantised)
    assert first_linear(base).lora_patches is None


@pytest.mark.parametrize("fmt", ("Q4_K", FP8_SCALED))
def test_quantised_models_get_the_core_patcher_class_and_keep_the_lora_on_the_dequantised_weight(
        comfy, quantized_models, lora_file, monkeypatch, fmt):
    """Where ComfyUI has CoreModelPatcher (its dynamic-VRAM patcher when that is on), quantised models get that
    class with the quantised patching mixed in: same prediction, LoRA still recorded on the layer, the stored
    bytes untouched. (The dynamic patcher itself needs a GPU and comfy-aimdo; a subclass stands in.)"""
    from comfy import model_patcher
    name = quantized_models["t2v"][fmt]
    plain = load(comfy, name)
    expected, expected_lora = predict(plain), predict(with_lora(comfy, plain))

    class CorePatcher(model_patcher.ModelPatcher):
        pass
    monkeypatch.setattr(model_patcher, "CoreModelPatcher", CorePatcher, raising=False)
    core = load(comfy, name)
    assert isinstance(core, CorePatcher) and type(core).__name__ == "QuantizedCorePatcher"
    stored = first_linear(core).weight.detach().clone()
    patched = with_lora(comfy, core)
    assert type(patched) is type(core)                  # clones keep the class
    assert torch.equal(predict(core), expected)
    assert torch.equal(predict(patched), expected_lora)
    assert first_linear(patched).lora_patches is not None and torch.equal(first_linear(patched).weight, stored)
    factory, args = core.cached_patcher_init
    assert not isinstance(factory(*args, disable_dynamic=True), CorePatcher)   # rebuilt without the core class


def test_lora_on_a_partially_loaded_quantised_model(comfy, quantized_models, lora_file):
    """ComfyUI's low-VRAM partial loading (layers left offloaded get the LoRA as a per-call weight
    function) gives what the fully loaded model gives.
    Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0 (partial vs full load); bound
    1e-5."""
    from comfy import model_management
    patched = with_lora(comfy, load(comfy, quantized_models["t2v"]["Q4_K"]))
    full = predict(patched)
    model_management.unload_all_models()
    patched.patch_model(device_to=patched.load_device, lowvram_model_memory=1)        # as good as nothing fits
    try:
        layer = first_linear(patched)
        assert layer.lora_patches is None and len(layer.weight_function) == 1
        x, context, mask, _ = inputs()
        with torch.no_grad():
            partial = patched.model.apply_model(x, torch.tensor([100.0, 100.0]), c_crossattn=context,
                                                attention_mask=mask)
    finally:
        patched.unpatch_model(patched.offload_device)
    assert_relative(partial, full, 1e-5, "partial vs full load")
    assert first_linear(patched).weight_function == []


def test_lora_in_a_graph_on_a_gguf_model(comfy, tiny_models, quantized_models, lora_file):
    plain, _ = run_t2v(comfy, t2v_graph(quantized_models["t2v"]["Q4_K"]))
    patched, frames = run_t2v(comfy, t2v_graph(quantized_models["t2v"]["Q4_K"], lora=lora_file))
    assert torch.isfinite(frames).all() and not torch.allclose(plain, patched)


def test_peft_lora_through_load_allegro_lora_on_a_gguf_model(comfy, base_dir, quantized_models, lora_file):
    """The same LoRA in diffusers/PEFT keys (no alpha: scale 1, as alpha = rank here) through 'Load
    Allegro LoRA' patches a GGUF model exactly as the ComfyUI-format file through core's loader.
    Compared with torch.equal; the value recorded is the LoRA's effect (a change check, > 1e-2): 2.70e-1 in every
    setting (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike)."""
    from safetensors.torch import load_file, save_file
    comfy_keys = load_file(base_dir / "models" / "loras" / LORA_NAME)
    peft = {}
    for key, tensor in comfy_keys.items():
        module = key.removeprefix("diffusion_model.").rsplit(".", 2)[0]
        if key.endswith(".lora_down.weight"):
            peft[f"transformer.{module}.lora_A.weight"] = tensor
        elif key.endswith(".lora_up.weight"):
            peft[f"transformer.{module}.lora_B.weight"] = tensor
    save_file(peft, base_dir / "models" / "loras" / "allegro_test_lora_peft.safetensors")
    base = load(comfy, quantized_models["t2v"]["Q4_K"])
    core = predict(with_lora(comfy, base))
    ours = comfy.call("AllegroVideo_LoraLoader", model=base, lora_name="allegro_test_lora_peft.safetensors",
                      strength_model=1.0)[0]
    assert first_linear(ours).weight.dtype == first_linear(base).weight.dtype        # still quantised
    assert torch.equal(predict(ours), core)
    assert relative(core, predict(base)) > 1e-2                                         # the LoRA does something


# --- fp8 matrix multiplication ------------------------------------------------------------------

def test_fp8_fast_falls_back_cleanly_where_fp8_compute_is_unsupported(comfy, quantized_models):
    """On this CPU ComfyUI reports no fp8 compute: fp8_e4m3fn_fast computes exactly as fp8_e4m3fn
    (core's ops pick manual casting for plain fp8 weights; scaled-fp8 layers dequantise)."""
    from comfy import model_management, ops
    assert not model_management.supports_fp8_compute(model_management.get_torch_device())
    names = quantized_models["t2v"]
    plain, fast = load(comfy, names["fp32"], "fp8_e4m3fn"), load(comfy, names["fp32"], "fp8_e4m3fn_fast")
    assert isinstance(first_linear(fast), ops.manual_cast.Linear)
    assert not isinstance(first_linear(fast), ops.fp8_ops.Linear)
    assert first_linear(fast).weight.dtype == torch.float8_e4m3fn
    assert torch.equal(predict(fast), predict(plain))
    # (fp8 choices keep a quantised file's unquantised tensors in bf16.)
    scaled, scaled_fast = load(comfy, names[FP8_SCALED], "fp8_e4m3fn"), load(comfy, names[FP8_SCALED], "fp8_e4m3fn_fast")
    assert not first_linear(scaled_fast).fp8_matmul
    assert torch.equal(predict(scaled_fast), predict(scaled))


def test_fp8_fast_multiplies_in_fp8_where_supported(comfy, quantized_models, lora_file, monkeypatch):
    """With fp8 compute reported (forced here; real on RTX 40xx / H100 …), fp8_e4m3fn_fast gives plain
    fp8 weights core's fp8 ops, as core's diffusion-model loader does, and makes scaled-fp8 layers
    multiply in fp8 through torch._scaled_mm (PyTorch runs it on CPU too, slowly: one layer is checked
    here), within fp8's input rounding of the dequantising path; with a LoRA they dequantise.
    Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 2.54e-2 in every setting; bound
    0.05 (2.0x: fp8's input rounding, ~2^-5, sets it, not the kernels)."""
    from comfy import model_management, ops
    names = quantized_models["t2v"]
    monkeypatch.setattr(model_management, "supports_fp8_compute", lambda device=None: True)
    plain_fast = load(comfy, names["fp32"], "fp8_e4m3fn_fast")
    assert isinstance(first_linear(plain_fast), ops.fp8_ops.Linear)
    layer = first_linear(load(comfy, names[FP8_SCALED], "fp8_e4m3fn_fast"))
    assert layer.fp8_matmul and layer.can_multiply_in_fp8()
    x = torch.randn(1, 4, 768, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        multiplied = layer(x)
        assert not layer.fp8_matmul_failed
        dequantised = torch.nn.functional.linear(x, layer.dequantized_weight(x.dtype, x.device),
                                                   layer.cast_bias(x.dtype, x.device))
    assert not torch.equal(multiplied, dequantised)                       # the fp8 path ran
    # The input is rounded to fp8 (3 mantissa bits, ~2^-5 relative): the result moves by that much.
    assert relative(multiplied, dequantised) <= 0.05
    layer.lora_patches = ([], "test")                                     # any recorded patch: dequantise
    assert not layer.can_multiply_in_fp8()


def test_bad_gguf_files_are_clear_errors_in_the_loader(comfy, base_dir, quantized_models):
    """A truncated download and a GGUF of another model family, picked in 'Load Allegro Model'."""
    import numpy as np
    from allegro.gguf_file import write_gguf
    folder = base_dir / "models" / "diffusion_models"
    whole = (folder / quantized_models["t2v"]["Q4_K"]).read_bytes()
    (folder / "broken_download.gguf").write_bytes(whole[:len(whole) // 3])
    write_gguf(folder / "flux_like.gguf", {"double_blocks.0.img_attn.qkv.weight": torch.zeros(96, 32),
                                           "img_in.weight": torch.from_numpy(np.zeros((32, 64), np.float32))})
    try:
        with pytest.raises(ValueError, match="truncated or damaged"):      # (the package's CheckpointError)
            load(comfy, "broken_download.gguf")
        with pytest.raises(ValueError, match="Flux transformer, not an Allegro"):
            load(comfy, "flux_like.gguf")
    finally:
        (folder / "broken_download.gguf").unlink()
        (folder / "flux_like.gguf").unlink()


def test_gguf_files_in_models_unet_are_listed_and_load(comfy, base_dir, quantized_models):
    import shutil
    unet = base_dir / "models" / "unet"
    unet.mkdir(parents=True, exist_ok=True)
    copy = unet / "allegro_from_unet_folder.gguf"
    shutil.copy(base_dir / "models" / "diffusion_models" / quantized_models["t2v"]["Q8_0"], copy)
    try:
        assert copy.name in comfy.node_types["AllegroVideo_ModelLoader"].define_schema().inputs[0].options
        assert first_linear(load(comfy, copy.name)).weight_format == "Q8_0"
    finally:
        copy.unlink()
