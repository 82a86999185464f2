"""Training a LoRA on the Allegro MODEL in ComfyUI (the node is nodes/train_lora.py), with the seed's objective
(allegro/training.py).

The adapters are ComfyUI's (comfy.weight_adapter, as core 'Train LoRA' makes them), attached as weight
wrappers of a clone of the MODEL, so the result saves with core 'Save LoRA Weights' in ComfyUI's LoRA format,
which 'Load Allegro LoRA' and core 'LoraLoaderModelOnly' read. Cancel stops between steps."""
import random

import torch
import torch.utils.checkpoint

import comfy.model_management
import comfy.utils
from comfy.weight_adapter import adapter_maps, adapters

from ..allegro import training
from ..allegro.checkpoints import read_safetensors
from . import sources


LORA_FOLDER = "loras"
NO_LORA = "[None]"
MAX_GRAD_NORM = 1.0                    # train.py --max_grad_norm
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def attach_adapters(patcher, existing: dict, algorithm: str, rank: int, dtype) -> tuple[dict, list]:
    """Trainable adapters on every 2-D+ weight of the DiT, as weight wrappers of `patcher`; an adapter
    is resumed from `existing` (a LoRA state dict in ComfyUI's format) where it names the module.
    Returns ({saved name: parameter}, adapters)."""
    parameters, attached, resumed_count = {}, [], 0
    for name, module in patcher.model.named_modules():
        weight = getattr(module, "weight", None)
        if not hasattr(module, "weight_function") or weight is None or weight.ndim < 2:
            continue
        if not name.startswith("diffusion_model."):
            continue
        alpha = float(existing.get(f"{name}.alpha", 1.0))
        resumed = next((found for found in (cls.load(name, existing, alpha, existing.get(f"{name}.dora_scale"))
                                            for cls in adapters) if found is not None), None)
        if resumed is not None:
            resumed_count += 1
        adapter = (resumed.to_train() if resumed is not None
                   else adapter_maps[algorithm].create_train(weight, rank=rank, alpha=1.0))
        adapter = adapter.to(dtype).train().requires_grad_(True)
        for parameter_name, parameter in adapter.named_parameters():
            # alpha is saved with the LoRA (it sets its scale) but not trained.
            parameter.requires_grad_(parameter_name != "alpha")
            parameters[f"{name}.{parameter_name}"] = parameter
        patcher.add_weight_wrapper(f"{name}.weight", adapter)
        attached.append(adapter)
    if existing and not resumed_count:
        raise ValueError("existing_lora holds no LoRA weights for this model's layers (is it a LoRA of another model, "
                         "or not a LoRA at all?): pick a LoRA trained on this Allegro model, or [None].")
    return parameters, attached


def checkpoint_blocks(blocks, enabled: bool):
    """Gradient checkpointing per transformer block (recomputed in backward); returns an undo callable."""
    if not enabled:
        return lambda: None
    originals = [block.forward for block in blocks]
    for block, forward in zip(blocks, originals):
        block.forward = (lambda *args, forward=forward, **kwargs:
                         torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs))

    def undo():
        for block, forward in zip(blocks, originals):
            block.forward = forward
    return undo


class Step:
    """One training step's inputs for one clip: latent (model space), caption and, for TI2V, the
    masked-video latent and frame mask of the drawn mask kind."""

    def __init__(self, base_model, vae, settings: dict, generator: torch.Generator, rng: random.Random):
        self.model, self.vae, self.settings = base_model, vae, settings
        self.generator, self.rng = generator, rng
        self.device = base_model.diffusion_model.proj_out.weight.device
        self.dtype = base_model.manual_cast_dtype or base_model.get_dtype()

    def _on_device(self, tensor):
        # .clone(): tensors made under ComfyUI's inference mode cannot be saved for backward.
        return tensor.to(self.device).clone()

    def ti2v_input(self, clip: dict, latent_shape) -> torch.Tensor:
        frames = clip["frames"]
        kind = self.settings["mask"]
        if kind == "seed mix":
            kind = training.pick_mask_kind(training.SEED_MASK_MIX, self.rng)
        given = training.given_frames(kind, frames.shape[0], self.rng)

        def encode(images, num_frames, height, width):
            masked = self.vae.encode_conditioning_frames(images, num_frames, height, width)
            return self.model.process_latent_in(self._on_device(masked))
        return training.ti2v_condition(frames, given, tuple(latent_shape[2:]), encode)

    def loss(self, clip: dict, empty_caption) -> torch.Tensor:
        latent = self.model.process_latent_in(self._on_device(clip["latent"]).float())
        noise = training.sample_noise(latent.shape, self.settings.get("noise_offset", training.DEFAULT_NOISE_OFFSET),
                                      self.generator).to(self.device)
        timesteps = training.sample_timesteps(latent.shape[0], self.generator)
        model_input = training.add_noise(latent, noise, timesteps.to(self.device))
        states, mask = clip["caption"]
        if empty_caption is not None and training.drop_caption(self.settings["caption_dropout"], self.rng):
            states, mask = empty_caption
        if self.model.is_ti2v:
            model_input = torch.cat([model_input, self.ti2v_input(clip, latent.shape)], dim=1)
        prediction = self.model.diffusion_model(model_input.to(self.dtype), timesteps.float().to(self.device),
                                                context=self._on_device(states).to(self.dtype),
                                                attention_mask=self._on_device(mask), transformer_options={})
        weights = training.min_snr_weights(timesteps, self.settings["snr_gamma"])
        return training.diffusion_loss(prediction, noise, weights)


def train(model, training_set: list, settings: dict, vae=None, empty_caption=None):
    """(patched MODEL clone, {name: LoRA tensor}, [loss per step])."""
    existing = {}
    if settings["existing_lora"] != NO_LORA:
        existing, _ = read_safetensors(sources.resolve(settings["existing_lora"], LORA_FOLDER))
    with torch.inference_mode(False):
        patcher = model.clone()
        parameters, attached = attach_adapters(patcher, existing, settings["algorithm"], settings["rank"],
                                               DTYPES[settings["lora_dtype"]])
        if not parameters:
            raise ValueError("No trainable weight found in this MODEL: connect an Allegro model "
                             "('Load Allegro Model').")
        patcher.model.requires_grad_(False)
        comfy.model_management.load_models_gpu([patcher], memory_required=1e20, force_full_load=True)
        trained = [parameter for parameter in parameters.values() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=settings["learning_rate"])
        generator = torch.Generator().manual_seed(settings["seed"])
        rng = random.Random(settings["seed"])
        step = Step(patcher.model, vae, settings, generator, rng)
        undo = checkpoint_blocks(patcher.model.diffusion_model.transformer_blocks, settings["gradient_checkpointing"])
        losses, progress = [], comfy.utils.ProgressBar(settings["steps"])
        try:
            for _ in range(settings["steps"]):
                comfy.model_management.throw_exception_if_processing_interrupted()
                loss = step.loss(training_set[rng.randrange(len(training_set))], empty_caption)
                if not torch.isfinite(loss):
                    raise ValueError(f"The loss became {loss.item()} at step {len(losses) + 1}: lower the "
                                     "learning rate, or train the LoRA in fp32.")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, MAX_GRAD_NORM)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                progress.update(1)
        finally:
            undo()
        for adapter in attached:
            adapter.requires_grad_(False)
        lora = {name: parameter.detach().clone() for name, parameter in parameters.items()}
    return patcher, lora, losses
