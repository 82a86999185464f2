"""Latent previews follow the preview setting on every ComfyUI: one made at run time (as ComfyUI-Manager's
preview setting writes args.preview_method) lasts until it is changed, and, where ComfyUI takes a
per-prompt choice (0.8+: the front-end's "Preview method" in extra_data), that choice applies to its
prompt only. The Allegro Sampler and core KSampler on the Allegro model preview alike (adapters/previews.py)."""
import pytest

pytestmark = pytest.mark.slow

T2V = "diffusers/Allegro-tiny"


def per_prompt_choice() -> bool:
    """Whether the running ComfyUI applies a preview method sent with the prompt (0.8+)."""
    import latent_preview
    return hasattr(latent_preview, "set_preview_method")


@pytest.fixture
def preview_setting(monkeypatch):
    """args.preview_method and the standing default, restored after the test."""
    import latent_preview
    from comfy.cli_args import args
    monkeypatch.setattr(args, "preview_method", args.preview_method)
    if per_prompt_choice():
        monkeypatch.setattr(latent_preview, "default_preview_method", latent_preview.default_preview_method)
    return args


def test_a_runtime_setting_outlasts_the_per_prompt_reset(comfy, preview_setting):
    import execution
    import latent_preview
    from comfy.cli_args import LatentPreviewMethod as Method
    args = preview_setting
    if not per_prompt_choice():
        # ComfyUI 0.3.75: no per-prompt reset, so a run-time setting lasts by itself; nothing is wrapped.
        assert not hasattr(execution, "set_preview_method")
        return
    reset = execution.set_preview_method            # what the executor calls before each prompt
    assert getattr(reset, "allegro_keeps_runtime_preview_setting", False)
    launch = latent_preview.default_preview_method
    runtime, other = [m for m in (Method.Latent2RGB, Method.TAESD, Method.Auto) if m != launch][:2]
    reset(None)
    assert args.preview_method == launch
    args.preview_method = runtime                   # e.g. ComfyUI-Manager's preview setting
    reset(None)
    assert args.preview_method == runtime
    reset("none")                                   # a prompt's own choice: for that prompt only
    assert args.preview_method == Method.NoPreviews
    reset(None)
    assert args.preview_method == runtime
    reset("default")
    assert args.preview_method == runtime
    args.preview_method = launch                    # set back at run time (e.g. previews off again)
    reset(None)
    assert args.preview_method == launch
    args.preview_method = other
    reset(other.value)
    assert args.preview_method == other
    reset(None)
    assert args.preview_method == other


def graph(sampler: str) -> dict:
    nodes = {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": T2V, "dtype": "fp32"}},
        "dit": {"class_type": "AllegroVideo_ModelLoader", "inputs": {"model_name": T2V, "weight_dtype": "fp32"}},
        "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
            "clip": ["t5", 0], "prompt": "a lighthouse at dusk", "negative_prompt": "blurry",
            "use_template": False, "clean_caption": False}},
        "latent": {"class_type": "AllegroVideo_EmptyLatentVideo",
                   "inputs": {"width": 64, "height": 64, "length": 8, "batch_size": 1}},
    }
    common = {"model": ["dit", 0], "positive": ["text", 0], "negative": ["text", 1], "seed": 1, "steps": 3,
              "cfg": 7.5, "sampler_name": "euler", "denoise": 1.0}
    if sampler == "allegro":
        nodes["sample"] = {"class_type": "AllegroVideo_Sampler", "inputs": {
            **common, "latent": ["latent", 0], "scheduler": "normal", "noise_stream": "comfy"}}
    else:
        nodes["sample"] = {"class_type": "KSampler", "inputs": {**common, "latent_image": ["latent", 0],
                                                                "scheduler": "normal"}}
    return nodes


def previews(comfy, sampler, **extra_data) -> str:
    """"every step" when each of the 3 steps' progress updates carried a preview image, "none" when no
    update did. Updates with a preview are always sent; newer ComfyUI (0.33) throttles those without one
    (ProgressBar.update_absolute sends the first and the last, between them at most one per interval)."""
    result = comfy.run(graph(sampler), targets=["sample"], extra_data=extra_data)
    assert result.status == "success", result.error
    updates = [(value, has_preview) for node, value, _, has_preview in result.progress if node == "sample"]
    if [has_preview for _, has_preview in updates] == [True] * 3:
        return "every step"
    if updates and not any(has_preview for _, has_preview in updates) and updates[-1][0] == 3:
        return "none"
    return f"unexpected updates (step, has preview): {updates}"


@pytest.mark.parametrize("sampler", ["allegro", "ksampler"])
def test_samplers_preview_by_the_runtime_setting_and_the_prompts_choice(comfy, tiny_models, preview_setting,
                                                                        sampler):
    from comfy.cli_args import LatentPreviewMethod as Method
    args = preview_setting
    args.preview_method = Method.Latent2RGB
    assert previews(comfy, sampler) == "every step"
    if per_prompt_choice():
        assert previews(comfy, sampler, preview_method="none") == "none"
        assert previews(comfy, sampler, preview_method="default") == "every step"
    assert previews(comfy, sampler) == "every step"
    args.preview_method = Method.NoPreviews
    assert previews(comfy, sampler) == "none"
    if per_prompt_choice():
        assert previews(comfy, sampler, preview_method="latent2rgb") == "every step"
        assert previews(comfy, sampler) == "none"
