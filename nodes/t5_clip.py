"""A native ComfyUI CLIP holding a T5 encoder with attention masks, built from a transformers
T5 config (the diffusers folder's text_encoder/config.json), so any T5 size loads: the real
T5 v1.1 XXL (4096-d, 24 blocks) as well as small ones. It is the same object the stock
CLIPLoader (type "mochi") makes from t5xxl_fp16.safetensors: ComfyUI's T5 and tokenizer."""
import comfy.model_management
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import comfy.text_encoders.genmo
import comfy.text_encoders.t5

# transformers' activation names → ComfyUI's T5 activation names
ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh", "gelu_pytorch_tanh": "gelu_pytorch_tanh", "gelu": "gelu_pytorch_tanh",
               "relu": "relu"}


def comfy_t5_config(hf_config: dict) -> dict:
    """ComfyUI's T5 config keys from a transformers T5Config dict."""
    projection = hf_config.get("feed_forward_proj", "relu")
    gated = hf_config.get("is_gated_act", projection.startswith("gated-"))
    activation = hf_config.get("dense_act_fn", "gelu_new" if projection == "gated-gelu" else projection.split("-")[-1])
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unsupported T5 activation {activation!r} in text_encoder/config.json")
    buckets = hf_config.get("relative_attention_num_buckets", 32)
    if buckets != 32 or hf_config.get("relative_attention_max_distance", 128) != 128:
        raise ValueError("ComfyUI's T5 supports 32 relative-position buckets up to distance 128; "
                         f"text_encoder/config.json has {buckets}")
    return {"d_ff": hf_config["d_ff"], "d_kv": hf_config["d_kv"], "d_model": hf_config["d_model"],
            "num_heads": hf_config["num_heads"], "num_layers": hf_config["num_layers"],
            "vocab_size": hf_config["vocab_size"], "dense_act_fn": ACTIVATIONS[activation], "is_gated_act": gated,
            "model_type": hf_config.get("model_type", "t5"), "layer_norm_epsilon": hf_config.get("layer_norm_epsilon", 1e-6)}


def t5_clip_target(hf_config: dict) -> comfy.supported_models_base.ClipTarget:
    config = comfy_t5_config(hf_config)

    class MaskedT5(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, layer="last", layer_idx=None, textmodel_json_config=config, dtype=dtype,
                             special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                             enable_attention_masks=True, return_attention_masks=True,
                             model_options={**model_options, "model_name": "t5xxl"})

    class T5TextEncoder(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, dtype=dtype, name="t5xxl", clip_model=MaskedT5, model_options=model_options)

    # ComfyUI's bundled T5 tokenizer: the T5 v1.1 SentencePiece vocabulary the hub's tokenizer/ holds.
    return comfy.supported_models_base.ClipTarget(comfy.text_encoders.genmo.MochiT5Tokenizer, T5TextEncoder)


def build_t5_clip(hf_config: dict, state_dict: dict, dtype=None) -> comfy.sd.CLIP:
    parameters = sum(t.numel() for t in state_dict.values())
    options = {} if dtype is None else {"dtype": dtype}
    clip = comfy.sd.CLIP(t5_clip_target(hf_config), parameters=parameters, model_options=options)
    missing, unexpected = clip.load_sd(state_dict)
    # transformers stores the tied input embedding twice (shared / encoder.embed_tokens).
    unexpected = [k for k in unexpected if k != "encoder.embed_tokens.weight"]
    if missing or unexpected:
        raise ValueError(f"The text encoder weights do not match text_encoder/config.json: "
                         f"missing {missing[:6]}, unexpected {unexpected[:6]}")
    return clip
