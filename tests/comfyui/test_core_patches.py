"""Core model patches reach the Allegro DiT, in the real executor: EasyCache (a DIFFUSION_MODEL wrapper)
and LazyCache (a PREDICT_NOISE wrapper) skip transformer work and change the result, TorchCompileModel
compiles and runs it, block replacement (patches_replace["dit"], SkipLayerGuidanceDiT) and the per-model
attention override (transformer_options["optimized_attention_override"]) run in place of the DiT's own,
and the package's Allegro Step Cache keeps working beside EasyCache."""
import logging

import pytest
import torch
from numerics import assert_measured, norm_relative

pytestmark = pytest.mark.slow

T2V = "diffusers/Allegro-tiny"
FRAMES, SIZE = 8, 64


def graph(steps=12, patches=(), sampler="euler", cfg=7.5) -> dict:
    """T5 + DiT + text encode + empty latent → (model patches, in order) → Allegro Sampler.
    `patches`: (class_type, inputs) pairs, each node taking the previous model as its "model"."""
    nodes = {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": T2V, "dtype": "fp32"}},
        "dit": {"class_type": "AllegroVideo_ModelLoader", "inputs": {"model_name": T2V, "weight_dtype": "fp32"}},
        "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
            "clip": ["t5", 0], "prompt": "a fox runs through snow", "negative_prompt": "blurry",
            "use_template": False, "clean_caption": False}},
        "latent": {"class_type": "AllegroVideo_EmptyLatentVideo",
                   "inputs": {"width": SIZE, "height": SIZE, "length": FRAMES, "batch_size": 1}},
    }
    model = ["dit", 0]
    for index, (class_type, inputs) in enumerate(patches):
        nodes[f"patch{index}"] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
        model = [f"patch{index}", 0]
    nodes["sample"] = {"class_type": "AllegroVideo_Sampler", "inputs": {
        "model": model, "positive": ["text", 0], "negative": ["text", 1], "latent": ["latent", 0],
        "seed": 5, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": "normal",
        "noise_stream": "comfy", "denoise": 1.0}}
    return nodes


class BlockRuns:
    """Counts the DiT's block passes (one per forward that runs its transformer blocks)."""

    def __init__(self, comfy, monkeypatch):
        patcher = comfy.call("AllegroVideo_ModelLoader", model_name=T2V, weight_dtype="fp32")[0]
        # The class ComfyUI loaded from the custom node (not a copy imported by the tests).
        dit_class = type(patcher.model.diffusion_model)
        original = dit_class.run_blocks
        self.count = 0

        def counting(model, *args, **kwargs):
            self.count += 1
            return original(model, *args, **kwargs)
        monkeypatch.setattr(dit_class, "run_blocks", counting)


def run(comfy, nodes, targets=("sample",)):
    result = comfy.run(nodes, targets=list(targets))
    assert result.status == "success", result.error
    return result


def sampled(comfy, nodes) -> torch.Tensor:
    samples = run(comfy, nodes).output("sample")["samples"]
    assert torch.isfinite(samples).all()
    return samples


@pytest.fixture
def block_runs(comfy, tiny_models, monkeypatch):
    return BlockRuns(comfy, monkeypatch)


def easycache(threshold, start=0.1, end=0.95):
    return ("EasyCache", {"reuse_threshold": threshold, "start_percent": start, "end_percent": end, "verbose": False})


def lazycache(threshold, start=0.1, end=0.95):
    return ("LazyCache", {"reuse_threshold": threshold, "start_percent": start, "end_percent": end, "verbose": False})


def test_easycache_skips_dit_passes_and_changes_the_result(comfy, block_runs, caplog):
    plain = sampled(comfy, graph())
    plain_runs, block_runs.count = block_runs.count, 0
    assert plain_runs == 12                       # one batched cond+uncond pass per step
    with caplog.at_level(logging.INFO):
        cached = sampled(comfy, graph(patches=[easycache(3.0)]))
    assert 0 < block_runs.count < plain_runs
    assert f"EasyCache - skipped {plain_runs - block_runs.count}/12 steps" in caplog.text
    assert not torch.equal(cached, plain)
    # Threshold 0 never reuses: the wrapper is on the DiT's path and changes nothing by itself.
    block_runs.count = 0
    assert torch.equal(sampled(comfy, graph(patches=[easycache(0.0)])), plain)
    assert block_runs.count == plain_runs


def test_lazycache_skips_dit_passes_and_changes_the_result(comfy, block_runs, caplog):
    plain = sampled(comfy, graph())
    plain_runs, block_runs.count = block_runs.count, 0
    with caplog.at_level(logging.INFO):
        cached = sampled(comfy, graph(patches=[lazycache(3.0)]))
    assert 0 < block_runs.count < plain_runs
    assert f"LazyCache - skipped {plain_runs - block_runs.count}/12 steps" in caplog.text
    assert not torch.equal(cached, plain)


def test_allegro_step_cache_works_beside_easycache(comfy, block_runs):
    step_cache = ("AllegroVideo_StepCache", {"threshold": 0.5, "start": 0.0, "end": 1.0})
    result = run(comfy, graph(patches=[step_cache, easycache(3.0)]), targets=["sample", "patch1"])
    # The sampler's model is EasyCache's clone (which on ComfyUI <= 0.8 deep-copies the step cache with it).
    counters = result.output("patch1").model_options["transformer_options"]["allegro_step_cache"]
    # EasyCache skips whole DiT calls; of the calls that reach the DiT, the step cache skips the blocks of some.
    dit_calls = counters.computed + counters.skipped
    assert 0 < dit_calls < 12 and counters.skipped > 0
    assert block_runs.count == counters.computed
    assert torch.isfinite(result.output("sample")["samples"]).all()


def test_block_replacement_patches_run_in_place_of_the_blocks(comfy, tiny_models):
    patcher = comfy.call("AllegroVideo_ModelLoader", model_name=T2V, weight_dtype="fp32")[0]
    model = patcher.model
    torch.manual_seed(0)
    x, context = torch.randn(2, 4, 2, 8, 8) * 10, torch.randn(2, 16, 32)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 9:] = 0
    sigma = torch.tensor([8.0, 8.0])

    def apply(transformer_options):
        with torch.no_grad():
            return model.apply_model(x, sigma, c_crossattn=context, attention_mask=mask,
                                     transformer_options=transformer_options)

    plain = apply({})
    seen = []

    def through(args, extra):                     # runs the original block: nothing changes
        seen.append((args["transformer_options"]["block_index"], args["img"].shape, args["txt"].shape))
        return extra["original_block"](args)

    def skip(args, extra):                        # as SkipLayerGuidanceDiT's: the block is left out
        return args

    replace = {("double_block", 0): through, ("double_block", 1): through}
    assert torch.equal(apply({"patches_replace": {"dit": replace}}), plain)
    assert [index for index, _, _ in seen] == [0, 1]
    assert seen[0][1] == (2, 2 * 4 * 4, 48) and seen[0][2] == (2, 16, 48)
    skipped = apply({"patches_replace": {"dit": {("double_block", 1): skip}}})
    assert not torch.allclose(skipped, plain)
    # Skipping block 1 equals running block 0 alone.
    blocks = model.diffusion_model.transformer_blocks
    kept, blocks[1] = blocks[1], PassThrough()
    try:
        assert torch.equal(apply({}), skipped)
    finally:
        blocks[1] = kept


class PassThrough(torch.nn.Module):
    def forward(self, tokens, *args):
        return tokens


def test_skip_layer_guidance_changes_the_result(comfy, tiny_models):
    plain = sampled(comfy, graph(steps=4))
    slg = ("SkipLayerGuidanceDiT", {"double_layers": "1", "single_layers": "", "scale": 3.0,
                                    "start_percent": 0.0, "end_percent": 1.0, "rescaling_scale": 0.0})
    guided = sampled(comfy, graph(steps=4, patches=[slg]))
    # Well beyond the rounding of running the cond alone instead of batched with the uncond.
    relative = ((guided - plain).norm() / plain.norm()).item()
    assert relative > 1e-3, relative


def test_attention_override_in_transformer_options_runs_instead(comfy, tiny_models):
    patcher = comfy.call("AllegroVideo_ModelLoader", model_name=T2V, weight_dtype="fp32")[0]
    model = patcher.model
    torch.manual_seed(1)
    x, context = torch.randn(1, 4, 2, 8, 8) * 10, torch.randn(1, 16, 32)
    sigma = torch.tensor([8.0])
    calls = []

    def logging_override(func, *args, **kwargs):
        calls.append(kwargs["transformer_options"] is options)
        return func(*args, **kwargs)

    def scaled_override(func, *args, **kwargs):
        return func(*args, **kwargs) * 0.5

    def apply(transformer_options):
        with torch.no_grad():
            return model.apply_model(x, sigma, c_crossattn=context, transformer_options=transformer_options)

    plain = apply({})
    options = {"optimized_attention_override": logging_override}
    assert torch.equal(apply(options), plain)
    # Self- and cross-attention in each of the 2 blocks, each seeing the sampler's transformer_options.
    assert len(calls) == 4
    assert not torch.allclose(apply({"optimized_attention_override": scaled_override}), plain)


def test_per_model_attention_setter_of_newer_comfyui(comfy, tiny_models):
    """ModelPatcher.set_model_optimized_attention (newer releases) wraps a plain attention function as
    the override; on releases without the setter, custom nodes set the override key themselves."""
    patcher = comfy.call("AllegroVideo_ModelLoader", model_name=T2V, weight_dtype="fp32")[0]
    calls = []

    def attention(q, k, v, heads, **kwargs):
        calls.append(heads)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=kwargs.get("mask"))

    patched = patcher.clone()
    if hasattr(patched, "set_model_optimized_attention"):
        patched.set_model_optimized_attention(attention)
    else:
        patched.model_options["transformer_options"]["optimized_attention_override"] = \
            lambda func, *args, **kwargs: attention(*args, **kwargs)
    torch.manual_seed(2)
    x, context = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 16, 32)
    # What the sampler hands the model: the patcher's transformer_options (copied per call).
    options = dict(patched.model_options["transformer_options"])
    with torch.no_grad():
        out = patched.model.apply_model(x, torch.tensor([4.0]), c_crossattn=context, transformer_options=options)
    assert torch.isfinite(out).all() and calls == [2, 2, 2, 2]


def test_torch_compile_model_runs_the_compiled_dit(comfy, tiny_models):
    """TorchCompileModel (inductor) compiles the DiT, and the compiled DiT samples what the eager one samples. Measured
    spread (avx512, 1 thread; three ComfyUI versions): 5.2e-7 (norm-relative); bound 1e-4 (190x: inductor writes its
    own kernels and orders sums as it likes, so ATEN_CPU_CAPABILITY does not bound what it does)."""
    import torch._dynamo
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    plain = sampled(comfy, graph(steps=2, cfg=1.0))
    compiled = sampled(comfy, graph(steps=2, cfg=1.0, patches=[("TorchCompileModel", {"backend": "inductor"})]))
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert frames > 0, "torch.compile never traced the DiT"
    assert_measured(norm_relative(compiled, plain), 1e-4, "compiled vs eager (norm)")
