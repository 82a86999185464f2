"""ComfyUI adapters over the `allegro` library: each module holds a few thin nodes."""
from .latent import AllegroEmptyLatentVideo
from .loaders import AllegroModelLoader, AllegroT5Loader, AllegroVAELoader
from .sampler import AllegroSampler
from .step_cache import AllegroStepCache
from .text_encode import AllegroTextEncode
from .ti2v import AllegroTI2VConditioning
from .vae_nodes import AllegroVAEDecode, AllegroVAEEncode

# Node ids are part of saved workflows: never rename them or their inputs.
NODE_CLASS_MAPPINGS = {
    "AllegroModelLoader": AllegroModelLoader,
    "AllegroVAELoader": AllegroVAELoader,
    "AllegroT5Loader": AllegroT5Loader,
    "AllegroTextEncode": AllegroTextEncode,
    "AllegroEmptyLatentVideo": AllegroEmptyLatentVideo,
    "AllegroSampler": AllegroSampler,
    "AllegroVAEDecode": AllegroVAEDecode,
    "AllegroVAEEncode": AllegroVAEEncode,
    "AllegroTI2VConditioning": AllegroTI2VConditioning,
    "AllegroStepCache": AllegroStepCache,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "AllegroModelLoader": "Load Allegro Model",
    "AllegroVAELoader": "Load Allegro VAE",
    "AllegroT5Loader": "Load Allegro T5 (diffusers)",
    "AllegroTextEncode": "Allegro Text Encode",
    "AllegroEmptyLatentVideo": "Allegro Empty Latent Video",
    "AllegroSampler": "Allegro Sampler",
    "AllegroVAEDecode": "Allegro VAE Decode",
    "AllegroVAEEncode": "Allegro VAE Encode",
    "AllegroTI2VConditioning": "Allegro TI2V Conditioning",
    "AllegroStepCache": "Allegro Step Cache",
}
