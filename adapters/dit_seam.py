"""ComfyUI's side of the DiT's one seam (allegro/dit_wrappers.py): which wrappers a call runs with.

A package node adds a feature by putting a DiTWrapper into the MODEL's transformer_options under a key of
its own (a second node of the same kind replaces the first); `wrappers_for` collects every such value,
whatever the feature, plus `CorePatches`, which speaks core's block protocol. The wrappers are checked
against each other before sampling (`check_before_sampling`, an ON_PRE_RUN callback of the model's
patcher) and again at each call.
"""
import comfy.patcher_extension

from ..allegro.dit_wrappers import MIDDLE, BlockInput, DiTWrapper, Wrappers

CHECK_KEY = "allegro_dit_wrappers"


class CorePatches(DiTWrapper):
    """Core's block patches, as core's DiTs run them (comfy/ldm/wan): tells patches which block runs
    (transformer_options["block_index"]) and runs patches_replace["dit"][("double_block", i)] in place of
    block i (SkipLayerGuidanceDiT and other block patches). A replacement gets {"img": tokens, "txt":
    captions, "vec": modulation, "pe": RoPE, "transformer_options"} and {"original_block": fn(args) →
    {"img": tokens}}, and returns {"img": tokens}. Per-model attention overrides reach ComfyUI's attention
    through the call's options (nodes/comfy_model.comfy_attention)."""
    order = MIDDLE

    def __init__(self, transformer_options: dict):
        self.options = transformer_options
        self.replacements = transformer_options.get("patches_replace", {}).get("dit", {})
        override = transformer_options.get("optimized_attention_override") is not None
        self.changes_output = bool(self.replacements) or override
        self.name = ("A node that replaces or skips DiT blocks (e.g. Skip Layer Guidance)" if self.replacements else
                     "A per-model attention override" if override else "ComfyUI's block patches")

    def wrap_block(self, run, block: BlockInput):
        self.options["block_index"] = block.index
        replacement = self.replacements.get(("double_block", block.index))
        if replacement is None:
            return run(block)

        def original_block(args):
            return {"img": run(BlockInput(block.index, args["img"], args["txt"], args["vec"], args["pe"]))}
        inputs = {"img": block.tokens, "txt": block.context, "vec": block.modulation, "pe": block.rope,
                  "transformer_options": self.options}
        return replacement(inputs, {"original_block": original_block})["img"]


def wrappers_for(transformer_options: dict) -> Wrappers:
    """The wrappers of one DiT call: core's patches and every DiTWrapper the MODEL's nodes put in its options."""
    features = [value for value in transformer_options.values() if isinstance(value, DiTWrapper)]
    return Wrappers([CorePatches(transformer_options), *features], options=transformer_options)


def check_before_sampling(patcher) -> None:
    """Refuse wrappers that cannot work together before the first step (ON_PRE_RUN)."""
    wrappers_for(patcher.model_options.get("transformer_options", {}))


def install_check(patcher) -> None:
    call_type = getattr(comfy.patcher_extension.CallbacksMP, "ON_PRE_RUN", None)
    if call_type is not None:
        patcher.add_callback_with_key(call_type, CHECK_KEY, check_before_sampling)
