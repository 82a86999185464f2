"""The ComfyUI adapters: what turns the model library (allegro/, pure PyTorch) into ComfyUI objects and reads
ComfyUI's back — the MODEL (model, quantized_ops, dit_seam), the VAE (vae), T5 as a CLIP (t5_clip), loading
(loading, sources), the LATENT and TI2V conditioning keys (video_latent, conditioning), memory checks, input
checks, previews, compatibility across ComfyUI versions (compat), and each feature's ComfyUI half (block_swap;
caches: the step cache and PAB; parallel; lora; lora_training, training_set, training_data; sampling; perflow).
The node classes in nodes/ are thin over these; nothing here imports a node module."""
