"""The Allegro Sampler node in ComfyUI's executor: every sampler and scheduler runs, the progress bar
and latent previews reach the UI hook, tqdm's console bar shows an ETA, denoise < 1 keeps the input
video in proportion, and the step cache is exact when it never skips and saves transformer calls when
it may."""
import pytest
import torch

pytestmark = pytest.mark.slow

T2V = "diffusers/Allegro-tiny"
FRAMES, SIZE = 8, 64


def graph(steps=3, sampler="euler_ancestral", scheduler="linspace (reference)", noise="reference", denoise=1.0,
          latent=None, cache=None) -> dict:
    nodes = {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": T2V, "dtype": "fp32"}},
        "dit": {"class_type": "AllegroVideo_ModelLoader", "inputs": {"model_name": T2V, "weight_dtype": "fp32"}},
        "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
            "clip": ["t5", 0], "prompt": "waves roll onto a beach", "negative_prompt": "blurry",
            "use_template": False, "clean_caption": True}},
        "latent": latent or {"class_type": "AllegroVideo_EmptyLatentVideo",
                             "inputs": {"width": SIZE, "height": SIZE, "length": FRAMES, "batch_size": 1}},
        "sample": {"class_type": "AllegroVideo_Sampler", "inputs": {
            "model": ["dit", 0], "positive": ["text", 0], "negative": ["text", 1], "latent": ["latent", 0],
            "seed": 3, "steps": steps, "cfg": 7.5, "sampler_name": sampler, "scheduler": scheduler,
            "noise_stream": noise, "denoise": denoise}},
    }
    if cache is not None:
        nodes["cache"] = {"class_type": "AllegroVideo_StepCache", "inputs": {"model": ["dit", 0], **cache}}
        nodes["sample"]["inputs"]["model"] = ["cache", 0]
    return nodes


def sampled(comfy, nodes) -> torch.Tensor:
    result = comfy.run(nodes, targets=["sample"])
    assert result.status == "success", result.error
    return result.output("sample")["samples"]


def sampler_names():
    import comfy.samplers
    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names():
    import comfy.samplers
    return ["linspace (reference)"] + list(comfy.samplers.KSampler.SCHEDULERS)


def test_every_sampler_runs(comfy, tiny_models):
    failures = {}
    for name in sampler_names():
        for noise in ("reference", "comfy"):
            result = comfy.run(graph(steps=2, sampler=name, noise=noise), targets=["sample"])
            if result.status != "success":
                failures[(name, noise)] = result.error["exception_message"]
            elif not torch.isfinite(result.output("sample")["samples"]).all():
                failures[(name, noise)] = "non-finite latent"
    assert failures == {}


def test_every_scheduler_runs(comfy, tiny_models):
    failures = {}
    for name in scheduler_names():
        result = comfy.run(graph(steps=3, sampler="euler", scheduler=name), targets=["sample"])
        if result.status != "success":
            failures[name] = result.error["exception_message"]
        elif not torch.isfinite(result.output("sample")["samples"]).all():
            failures[name] = "non-finite latent"
    assert failures == {}


def test_progress_and_latent_previews_reach_the_ui(comfy, tiny_models, monkeypatch, capfd):
    from comfy.cli_args import LatentPreviewMethod, args
    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod.Latent2RGB)
    result = comfy.run(graph(steps=4), targets=["sample"])
    assert result.status == "success", result.error
    updates = [(value, total, preview) for node, value, total, preview in result.progress if node == "sample"]
    assert [(value, total) for value, total, _ in updates] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(preview for _, _, preview in updates), "no latent preview image with the progress updates"
    # The console bar (tqdm, as for KSampler) has a rate and a time-remaining estimate.
    console = capfd.readouterr().err
    assert "4/4 [" in console and "<" in console and ("it/s" in console or "s/it" in console), console[-2000:]


def encoded_video_latent() -> dict:
    """A fixed, structured 'video' latent as a VAE encode would give (stands in for 'Allegro VAE Encode')."""
    grid = torch.linspace(-1, 1, SIZE // 8)
    pattern = torch.sin(3 * grid)[:, None] * torch.cos(2 * grid)[None, :]
    samples = pattern.expand(1, 4, FRAMES // 4, SIZE // 8, SIZE // 8).clone() * 0.8
    return samples


def test_denoise_below_one_keeps_the_input_video_in_proportion(comfy, tiny_models):
    import nodes as comfy_nodes
    source = encoded_video_latent()
    # A constant node that returns the latent: ComfyUI's executor runs it like any other node.
    comfy_nodes.NODE_CLASS_MAPPINGS.setdefault("AllegroTestFixedLatent", FixedLatent)
    FixedLatent.samples = source
    latent_node = {"class_type": "AllegroTestFixedLatent", "inputs": {}}
    distance = {}
    for denoise in (0.2, 0.6, 1.0):
        out = sampled(comfy, graph(steps=5, sampler="euler", scheduler="normal", denoise=denoise, latent=latent_node))
        assert out.shape == source.shape
        distance[denoise] = (out - source).pow(2).mean().sqrt().item()
    assert distance[0.2] < distance[0.6] < distance[1.0]
    # (The tiny model is random, not a denoiser, so only the proportion is meaningful, not closeness.)
    assert distance[0.2] < 0.5 * distance[1.0]


class FixedLatent:
    samples: torch.Tensor
    CATEGORY = "Allegro/tests"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "get"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def get(self):
        return ({"samples": self.samples.clone()},)


def test_step_cache_is_exact_when_it_never_skips_and_close_when_it_does(comfy, tiny_models):
    plain = sampled(comfy, graph(steps=10, sampler="euler", scheduler="normal"))
    never = sampled(comfy, graph(steps=10, sampler="euler", scheduler="normal",
                                 cache={"threshold": 0.0, "start": 0.0, "end": 1.0}))
    assert torch.equal(plain, never)
    result = comfy.run(graph(steps=10, sampler="euler", scheduler="normal",
                             cache={"threshold": 0.5, "start": 0.1, "end": 0.9}), targets=["sample", "cache"])
    assert result.status == "success", result.error
    cached = result.output("sample")["samples"]
    counters = result.output("cache").model_options["transformer_options"]["allegro_step_cache"]
    # One DiT call per step (ComfyUI batches cond and uncond together): 10 calls, some skipped.
    assert counters.skipped > 0 and counters.computed > 0
    assert counters.skipped + counters.computed == 10
    assert not torch.equal(plain, cached)
    relative = ((cached - plain).norm() / plain.norm()).item()
    assert relative < 0.5, relative
