"""ComfyUI adapters over the `allegro` library: each module holds a few thin V3 nodes.

Node ids carry the prefix "AllegroVideo_", which no other pack uses (the older Allegro pack
registers LoadAllegroModel, AllegroSampler, …; ComfyUI lets the pack loaded last silently replace an
id). Ids and input names are part of saved workflows: never rename them."""
import logging
import sys

from comfy_api.v0_0_2 import ComfyExtension, io

from .clips import AllegroJoinClips
from .block_swap import AllegroBlockSwap
from .latent import AllegroEmptyLatentVideo
from .loaders import AllegroModelLoader, AllegroT5Loader, AllegroVAELoader
from .lora import AllegroLoraLoader
from ..adapters.previews import keep_runtime_preview_setting
from .pab import AllegroPAB
from .parallel import AllegroMultiGPU
from .perflow import AllegroPeRFlowSampler
from .sampler import AllegroSampler
from .step_cache import AllegroStepCache
from .text_encode import AllegroTextEncode
from .ti2v import AllegroTI2VConditioning
from .ti2v_keyframes import AllegroTI2VContinue, AllegroTI2VKeyframes
from .train_lora import AllegroTrainLoRA
from .training_dataset import AllegroTrainingDataset
from .training_set import AllegroTrainingClip
from .vae_nodes import AllegroVAEDecode, AllegroVAEEncode

NODE_ID_PREFIX = "AllegroVideo_"
NODES: list[type[io.ComfyNode]] = [
    AllegroModelLoader, AllegroVAELoader, AllegroT5Loader, AllegroTextEncode, AllegroEmptyLatentVideo,
    AllegroSampler, AllegroVAEDecode, AllegroVAEEncode, AllegroTI2VConditioning, AllegroStepCache,
    AllegroLoraLoader, AllegroPAB,
    AllegroPeRFlowSampler,
    AllegroTI2VKeyframes, AllegroTI2VContinue, AllegroJoinClips, AllegroMultiGPU, AllegroBlockSwap,
    AllegroTrainingClip, AllegroTrainingDataset, AllegroTrainLoRA,
]
# The ids this package used before the prefix (version 0.1): ComfyUI versions with node replacement
# open workflows saved with them as the new nodes (same inputs, same order).
FORMER_NODE_IDS = {
    "AllegroModelLoader": "AllegroVideo_ModelLoader", "AllegroVAELoader": "AllegroVideo_VAELoader",
    "AllegroT5Loader": "AllegroVideo_T5Loader", "AllegroTextEncode": "AllegroVideo_TextEncode",
    "AllegroEmptyLatentVideo": "AllegroVideo_EmptyLatentVideo", "AllegroSampler": "AllegroVideo_Sampler",
    "AllegroVAEDecode": "AllegroVideo_VAEDecode", "AllegroVAEEncode": "AllegroVideo_VAEEncode",
    "AllegroTI2VConditioning": "AllegroVideo_TI2VConditioning", "AllegroStepCache": "AllegroVideo_StepCache",
}


async def register_replacements() -> int:
    """Map FORMER_NODE_IDS to the new nodes where ComfyUI supports node replacement (newer than
    0.8.0); returns how many were registered. Optional: the nodes must load even where it cannot
    run, so it logs one line and returns 0 instead of raising."""
    from comfy_api import latest
    replace = getattr(io, "NodeReplace", None)
    api = latest.ComfyAPI() if hasattr(latest, "ComfyAPI") else None
    registry = getattr(api, "node_replacement", None)
    if replace is None or registry is None:
        return 0
    # ComfyUI keeps the mapping on its web server (it serves it to the front-end); a headless
    # embedding (e.g. the test harness's in-process executor) has none.
    if getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None) is None:
        logging.info("ComfyUI-Allegro: no ComfyUI web server in this process, so workflows with the 0.1 node ids "
                     "are not mapped to the new nodes")
        return 0
    try:
        for old, new in FORMER_NODE_IDS.items():
            # No input mapping: the front-end then maps links and widget values by the new node's names,
            # which is exact here (the new nodes keep 0.1's inputs in 0.1's order and add only after them).
            await registry.register(replace(new_node_id=new, old_node_id=old))
    except Exception as error:         # a registry that changed shape must not cost the nodes
        logging.warning("ComfyUI-Allegro: could not register the 0.1 node ids for replacement (%s: %s); "
                        "workflows with those ids open with missing nodes", type(error).__name__, error)
        return 0
    return len(FORMER_NODE_IDS)


class AllegroExtension(ComfyExtension):
    async def on_load(self) -> None:           # called by ComfyUI versions that have node replacement
        await register_replacements()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> AllegroExtension:
    keep_runtime_preview_setting()             # previews: see adapters/previews.py
    return AllegroExtension()
