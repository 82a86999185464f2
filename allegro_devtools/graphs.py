"""Small API-format graphs the tests and benchmarks run on the tiny weights."""


def t2v_graph(model_name: str, weight_dtype: str = "fp32", lora: str | None = None, block_swap: int | None = None,
              size: int = 64, frames: int = 8, steps: int = 3) -> dict:
    """Tiny T5 → text encode; `model_name` through Load Allegro Model (then a core LoRA loader and the
    Allegro Block Swap node when asked); empty latent → Allegro Sampler → tiny VAE decode."""
    nodes = {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": "diffusers/Allegro-tiny", "dtype": "fp32"}},
        "dit": {"class_type": "AllegroVideo_ModelLoader", "inputs": {"model_name": model_name, "weight_dtype": weight_dtype}},
        "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
            "clip": ["t5", 0], "prompt": "a paper boat on a pond", "negative_prompt": "blurry",
            "use_template": False, "clean_caption": False}},
        "latent": {"class_type": "AllegroVideo_EmptyLatentVideo",
                   "inputs": {"width": size, "height": size, "length": frames, "batch_size": 1}},
        "sample": {"class_type": "AllegroVideo_Sampler", "inputs": {
            "model": ["dit", 0], "positive": ["text", 0], "negative": ["text", 1], "latent": ["latent", 0],
            "seed": 5, "steps": steps, "cfg": 7.5, "sampler_name": "euler_ancestral",
            "scheduler": "linspace (reference)", "noise_stream": "reference", "denoise": 1.0}},
        "vae": {"class_type": "AllegroVideo_VAELoader", "inputs": {"vae_name": "diffusers/Allegro-tiny", "dtype": "fp32"}},
        "decode": {"class_type": "AllegroVideo_VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
    }
    model = ["dit", 0]
    if lora is not None:
        nodes["lora"] = {"class_type": "LoraLoaderModelOnly",
                         "inputs": {"model": model, "lora_name": lora, "strength_model": 1.0}}
        model = ["lora", 0]
    if block_swap is not None:
        nodes["swap"] = {"class_type": "AllegroVideo_BlockSwap",
                         "inputs": {"model": model, "resident_blocks": block_swap, "prefetch": 1}}
        model = ["swap", 0]
    nodes["sample"]["inputs"]["model"] = model
    return nodes


def run_t2v(comfy, graph: dict):
    """(sampled latent, decoded frames) of a t2v_graph run in the in-process ComfyUI."""
    result = comfy.run(graph, targets=["decode"])
    if result.status != "success":
        raise AssertionError(f"graph failed: {result.error}")
    return result.output("sample")["samples"], result.output("decode")
