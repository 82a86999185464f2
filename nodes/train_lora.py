"""Allegro Train LoRA: fine-tunes a LoRA (or LoHa, LoKr, … — ComfyUI's own trainable adapters) on the
Allegro DiT with the seed's objective (allegro/training.py), on a set from 'Allegro Training Clip'.

The adapters are ComfyUI's (comfy.weight_adapter, as core 'Train LoRA' makes them), attached as weight
wrappers of a clone of the MODEL: the LORA_MODEL output saves with core 'Save LoRA Weights' in ComfyUI's
LoRA format, which 'Load Allegro LoRA' and core 'LoraLoaderModelOnly' read; the LOSS_MAP output
plots with core 'Plot Loss Graph'. Cancel stops between steps: nothing is output, so nothing is saved."""
import random

import torch
import torch.utils.checkpoint
from comfy_api.v0_0_2 import io

import comfy.model_management
import comfy.utils
from comfy.weight_adapter import adapter_maps, adapters

from ..allegro import training
from ..allegro.checkpoints import read_safetensors
from ..adapters import checks, sources
from .training_set import CATEGORY, TRAINING_SET, caption_of, checked_set

NODE = "Allegro Train LoRA"
MAX_STEPS, MAX_RANK = 100000, 256
MIN_LEARNING_RATE, MAX_LEARNING_RATE, MAX_SNR_GAMMA = 1e-7, 1.0, 100.0
MAX_SEED = 0xFFFFFFFFFFFFFFFF

LORA_FOLDER = "loras"
NO_LORA = "[None]"
MAX_GRAD_NORM = 1.0                    # train.py --max_grad_norm
MASK_CHOICES = ("seed mix",) + training.MASK_KINDS
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


class AllegroTrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_TrainLoRA",
            display_name="Allegro Train LoRA",
            category=CATEGORY,
            description="Trains a LoRA on the Allegro (or Allegro-TI2V) model as the seed's train.py trains Allegro: "
                        "DDPM noise (with the seed's 0.02 offset noise) over 1000 timesteps, noise-prediction MSE with min-SNR weighting, caption dropout "
                        "to the empty prompt, and for TI2V the first-frame / first+last / continuation masks.",
            inputs=[
                io.Model.Input("model", tooltip="The Allegro or Allegro-TI2V model to train on."),
                TRAINING_SET.Input("training_set", tooltip="Clips from 'Allegro Training Clip'."),
                io.Int.Input("steps", default=200, min=1, max=MAX_STEPS, tooltip="Optimizer steps, one clip each."),
                io.Float.Input("learning_rate", default=1e-4, min=MIN_LEARNING_RATE, max=MAX_LEARNING_RATE, step=1e-6,
                               tooltip="AdamW learning rate (the seed's default 1e-4)."),
                io.Int.Input("rank", default=16, min=1, max=MAX_RANK, tooltip="Rank of new adapters."),
                io.Combo.Input("algorithm", options=list(adapter_maps), default=list(adapter_maps)[0],
                               tooltip="ComfyUI's adapter kind for new adapters (as core 'Train LoRA')."),
                io.Float.Input("snr_gamma", default=training.DEFAULT_SNR_GAMMA, min=0.0, max=MAX_SNR_GAMMA, step=0.1,
                               tooltip="Min-SNR loss weighting gamma (the seed's 5.0); 0 turns it off (plain MSE)."),
                io.Float.Input("caption_dropout", default=training.DEFAULT_CAPTION_DROPOUT, min=0.0, max=1.0,
                               step=0.01, tooltip="How often a caption is replaced by the empty prompt (the seed's "
                                                  "0.1), which keeps CFG working. Needs 'empty_caption'."),
                io.Combo.Input("ti2v_masks", options=list(MASK_CHOICES), default=MASK_CHOICES[0],
                               tooltip="TI2V models: which frames each step gives the model. seed mix: first frame "
                                       "50%, first+last 40%, continuation 10%, as train_ti2v.py."),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute each block's activations in backward: far less memory, ~30% "
                                         "slower."),
                io.Combo.Input("existing_lora", options=sources.file_choices(LORA_FOLDER) + [NO_LORA],
                               default=NO_LORA, tooltip="Resume training this LoRA (ComfyUI format, e.g. one "
                                                        "saved by 'Save LoRA Weights'), or [None] for a new one."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED,
                             tooltip="Seeds adapter initialisation, noise, timesteps, clip order and masks."),
                io.Combo.Input("lora_dtype", options=list(DTYPES), default="fp32", tooltip="The adapters' dtype."),
                io.Conditioning.Input("empty_caption", optional=True,
                                      tooltip="'Allegro Text Encode' of an empty prompt (use_template and "
                                              "clean_caption off): what a dropped caption becomes."),
                io.Vae.Input("vae", optional=True, tooltip="The Allegro VAE: TI2V training encodes its masked "
                                                           "videos with it."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the trained LoRA applied."),
                io.Custom("LORA_MODEL").Output(display_name="lora", tooltip="To core 'Save LoRA Weights'."),
                io.Custom("LOSS_MAP").Output(display_name="loss_map", tooltip="To core 'Plot Loss Graph'."),
                io.Int.Output(display_name="steps", tooltip="Steps trained (to 'Save LoRA Weights' steps)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, existing_lora=None):
        if existing_lora in (None, NO_LORA):
            return True
        return sources.check_choice(existing_lora, sources.file_choices(LORA_FOLDER), LORA_FOLDER)

    @classmethod
    def execute(cls, model, training_set, steps, learning_rate, rank, algorithm, snr_gamma, caption_dropout,
                ti2v_masks, gradient_checkpointing, existing_lora, seed, lora_dtype, empty_caption=None,
                vae=None) -> io.NodeOutput:
        if not checked_set(NODE, "training_set", training_set):
            raise ValueError("The training set is empty: add clips with 'Allegro Training Clip'.")
        steps = checks.whole_number(NODE, "steps", steps, 1, MAX_STEPS)
        learning_rate = checks.finite_number(NODE, "learning_rate", learning_rate, MIN_LEARNING_RATE, MAX_LEARNING_RATE)
        rank = checks.whole_number(NODE, "rank", rank, 1, MAX_RANK)
        snr_gamma = checks.finite_number(NODE, "snr_gamma", snr_gamma, 0.0, MAX_SNR_GAMMA)
        caption_dropout = checks.finite_number(NODE, "caption_dropout", caption_dropout, 0.0, 1.0)
        seed = checks.whole_number(NODE, "seed", seed, 0, MAX_SEED)
        algorithm = checks.choice(NODE, "algorithm", algorithm, list(adapter_maps))
        ti2v_masks = checks.choice(NODE, "ti2v_masks", ti2v_masks, list(MASK_CHOICES))
        lora_dtype = checks.choice(NODE, "lora_dtype", lora_dtype, list(DTYPES))
        if existing_lora != NO_LORA:
            existing_lora = checks.choice(NODE, "existing_lora", existing_lora, sources.file_choices(LORA_FOLDER))
        if caption_dropout > 0 and empty_caption is None:
            raise ValueError(f"caption_dropout is {caption_dropout:g} but 'empty_caption' is not connected: connect "
                             "'Allegro Text Encode' with an empty prompt, or set caption_dropout to 0.")
        is_ti2v = getattr(model.model, "is_ti2v", None)
        if is_ti2v is None:
            raise ValueError("'Allegro Train LoRA' trains Allegro models: connect 'Load Allegro Model'.")
        if is_ti2v and vae is None:
            raise ValueError("Training Allegro-TI2V encodes the masked videos with the VAE: connect the Allegro VAE "
                             "to 'vae'.")
        settings = {"steps": steps, "learning_rate": learning_rate, "rank": rank, "algorithm": algorithm,
                    "snr_gamma": snr_gamma or None, "caption_dropout": caption_dropout, "mask": ti2v_masks,
                    "gradient_checkpointing": gradient_checkpointing, "existing_lora": existing_lora, "seed": seed,
                    "lora_dtype": lora_dtype}
        empty = caption_of(empty_caption, "empty_caption") if empty_caption is not None else None
        patched, lora, losses = train(model, training_set, settings, vae, empty)
        return io.NodeOutput(patched, lora, {"loss": losses}, steps)
