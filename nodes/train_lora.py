"""Allegro Train LoRA: fine-tunes a LoRA (or LoHa, LoKr, … — ComfyUI's own trainable adapters) on the
Allegro DiT with the seed's objective (allegro/training.py), on a set from 'Allegro Training Clip'.

The adapters are ComfyUI's, attached as weight wrappers of a clone of the MODEL (adapters/lora_training.py):
the LORA_MODEL output saves with core 'Save LoRA Weights' in ComfyUI's
LoRA format, which 'Load Allegro LoRA' and core 'LoraLoaderModelOnly' read; the LOSS_MAP output
plots with core 'Plot Loss Graph'. Cancel stops between steps: nothing is output, so nothing is saved."""
from comfy_api.v0_0_2 import io

from comfy.weight_adapter import adapter_maps

from ..allegro import training
from ..adapters import checks, sources
from ..adapters.lora_training import DTYPES, LORA_FOLDER, NO_LORA, train
from ..adapters.training_set import caption_of, checked_set
from .training_set import CATEGORY, TRAINING_SET

NODE = "Allegro Train LoRA"
MAX_STEPS, MAX_RANK = 100000, 256
MIN_LEARNING_RATE, MAX_LEARNING_RATE, MAX_SNR_GAMMA = 1e-7, 1.0, 100.0
MAX_SEED = 0xFFFFFFFFFFFFFFFF

MASK_CHOICES = ("seed mix",) + training.MASK_KINDS


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
