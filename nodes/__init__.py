"""ComfyUI adapters over the `allegro` library: each module holds a few thin nodes."""
from .latent import AllegroEmptyLatentVideo
from .loaders import AllegroModelLoader, AllegroT5Loader, AllegroVAELoader
from .sampler import AllegroSampler
from .text_encode import AllegroTextEncode

# Node ids are part of saved workflows: never rename them or their inputs.
NODE_CLASS_MAPPINGS = {
    "AllegroModelLoader": AllegroModelLoader,
    "AllegroVAELoader": AllegroVAELoader,
    "AllegroT5Loader": AllegroT5Loader,
    "AllegroTextEncode": AllegroTextEncode,
    "AllegroEmptyLatentVideo": AllegroEmptyLatentVideo,
    "AllegroSampler": AllegroSampler,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "AllegroModelLoader": "Load Allegro Model",
    "AllegroVAELoader": "Load Allegro VAE",
    "AllegroT5Loader": "Load Allegro T5 (diffusers)",
    "AllegroTextEncode": "Allegro Text Encode",
    "AllegroEmptyLatentVideo": "Allegro Empty Latent Video",
    "AllegroSampler": "Allegro Sampler",
}
