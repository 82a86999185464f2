"""allegro/lora_keys.py: every LoRA naming scheme maps to the module it names, and nothing else does."""
import pytest

from allegro.lora_keys import module_names, split_key, to_comfy_layout


def test_key_renaming_is_exact():
    modules = module_names(["transformer_blocks.0.attn1.to_out.0.weight", "transformer_blocks.0.attn1.to_out.0.bias",
                            "transformer_blocks.0.ff.net.2.weight", "proj_out.weight"])
    assert modules == {"transformer_blocks.0.attn1.to_out.0", "transformer_blocks.0.ff.net.2", "proj_out"}
    kohya = {m.replace(".", "_"): m for m in modules}
    cases = {
        "transformer.transformer_blocks.0.attn1.to_out.0.lora_A.weight": ("transformer_blocks.0.attn1.to_out.0", "lora_A.weight"),
        "base_model.model.proj_out.lora_B.default.weight": ("proj_out", "lora_B.default.weight"),
        "transformer_blocks.0.ff.net.2.alpha": ("transformer_blocks.0.ff.net.2", "alpha"),
        "lora_unet_transformer_blocks_0_ff_net_2.lora_up.weight": ("transformer_blocks.0.ff.net.2", "lora_up.weight"),
        "diffusion_model.proj_out.diff_b": ("proj_out", "diff_b"),
        "lora_te_text_model.lora_up.weight": None,
        "transformer.norm_out.lora_A.weight": None,
    }
    for key, expected in cases.items():
        assert split_key(key, modules, kohya) == expected, key
    renamed, unmatched = to_comfy_layout({"transformer.proj_out.lora_A.weight": 1, "text.lora_A.weight": 2}, modules)
    assert renamed == {"diffusion_model.proj_out.lora_A.weight": 1} and unmatched == ["text.lora_A.weight"]
    with pytest.raises(ValueError, match="mixes formats"):
        to_comfy_layout({"transformer.proj_out.alpha": 1, "lora_unet_proj_out.alpha": 2}, modules)
