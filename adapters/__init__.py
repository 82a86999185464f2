"""The ComfyUI adapters: what turns the model library (allegro/, pure PyTorch) into ComfyUI objects and reads
ComfyUI's back — the MODEL (model, quantized_ops, dit_seam), the VAE (vae), T5 as a CLIP (t5_clip), loading
(loading, sources), the LATENT and TI2V conditioning keys (video_latent, conditioning), memory checks, input
checks, previews, compatibility across ComfyUI versions (compat), and the features' wrappers in ComfyUI terms
(block_swap, step_cache, lora, sampling, perflow, …). The node classes in nodes/ are thin over these; nothing
here imports a node module."""
