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

from ..allegro.checkpoint_kinds import CheckpointError
from ..allegro.config import MAX_SIZE, block_count
from ..allegro.quoting import quote

# transformers' activation names → ComfyUI's T5 activation names
ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh", "gelu_pytorch_tanh": "gelu_pytorch_tanh", "gelu": "gelu_pytorch_tanh",
               "relu": "relu"}


T5_SIZES = ("d_model", "d_kv", "d_ff", "num_heads", "num_layers", "vocab_size")
MAX_VOCABULARY = 1 << 20
TOKENIZER_VOCABULARY = 32100        # ids ComfyUI's T5 tokenizer can give (T5 v1.1's SentencePiece + extra ids)


def check_t5_config(hf_config: dict, weights: dict, source: str) -> None:
    """One clear error before anything is built: the sizes in text_encoder/config.json are whole numbers
    in range and agree with the tensors (ComfyUI builds the T5 from the config first, so a wrong config
    would otherwise end in the allocator or a wall of size mismatches)."""
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{source} came without a T5 config.json. 'Load Allegro T5 (diffusers)' reads a hub "
                              "folder's text_encoder/; load a single T5 file with the stock 'Load CLIP' (type mochi).")
    where = f"{source}/config.json"
    missing = [key for key in T5_SIZES if key not in hf_config]
    if missing:
        raise CheckpointError(f"{where} does not give the T5 sizes {', '.join(missing)}: it is not a transformers T5 "
                              "config. Download the text_encoder folder again (config.json with its weights).")
    for key in T5_SIZES:
        value, highest = hf_config[key], MAX_VOCABULARY if key == "vocab_size" else MAX_SIZE
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= highest:
            raise CheckpointError(f"{where}: {key} must be a whole number from 1 to {highest}, got {quote(value)} "
                                  "(T5-XXL has d_model 4096, d_kv 64, d_ff 10240, 64 heads, 24 layers).")
    c = hf_config
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in weights
    feed_forward = "wi_0" if gated else "wi"
    expected = {
        "shared.weight": (c["vocab_size"], c["d_model"]),
        "encoder.block.0.layer.0.SelfAttention.q.weight": (c["num_heads"] * c["d_kv"], c["d_model"]),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, c["num_heads"]),
        f"encoder.block.0.layer.1.DenseReluDense.{feed_forward}.weight": (c["d_ff"], c["d_model"]),
        "encoder.final_layer_norm.weight": (c["d_model"],),
    }
    if "shared.weight" not in weights and "encoder.embed_tokens.weight" in weights:
        expected["encoder.embed_tokens.weight"] = expected.pop("shared.weight")
    absent = [name for name in expected if name not in weights]
    if absent:
        raise CheckpointError(f"{source} is not a complete T5 encoder: {', '.join(absent)} missing. "
                              "Download the text_encoder folder again.")
    problems = [f"{name} is {list(weights[name].shape)} where the config means {list(shape)}"
                for name, shape in expected.items() if tuple(weights[name].shape) != shape]
    layers = block_count(weights, "encoder.block.")
    if layers != c["num_layers"]:
        problems.insert(0, f"num_layers={c['num_layers']} but the weights have {layers} blocks")
    declared_gated = c.get("is_gated_act", str(c.get("feed_forward_proj", "relu")).startswith("gated-"))
    if declared_gated != gated:
        problems.append(f"the config says the feed-forward is {'' if declared_gated else 'not '}gated, the weights "
                        f"{'are' if gated else 'are not'}")
    if problems:
        raise CheckpointError(f"{where} does not describe its weights: {'; '.join(problems)}. The config belongs to "
                              "another T5: download the text_encoder folder again (config.json with its weights).")
    if c["vocab_size"] < TOKENIZER_VOCABULARY:
        raise CheckpointError(f"{where}: vocab_size {c['vocab_size']} is smaller than the T5 tokenizer's "
                              f"{TOKENIZER_VOCABULARY} ids; Allegro uses T5 v1.1 (32128).")


def comfy_t5_config(hf_config: dict) -> dict:
    """ComfyUI's T5 config keys from a transformers T5Config dict."""
    projection = hf_config.get("feed_forward_proj", "relu")
    gated = hf_config.get("is_gated_act", projection.startswith("gated-"))
    activation = hf_config.get("dense_act_fn", "gelu_new" if projection == "gated-gelu" else projection.split("-")[-1])
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unsupported T5 activation {quote(activation)} in text_encoder/config.json")
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


def build_t5_clip(hf_config: dict, state_dict: dict, dtype=None, source: str = "text_encoder") -> comfy.sd.CLIP:
    check_t5_config(hf_config, state_dict, source)
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
