"""Write the UI-format workflows in workflows/ from the short descriptions below.

    .venv/bin/python -m scripts.build_workflows          # from the repository root; rewrites workflows/*.json

Widget order, defaults, input and output types come from a live ComfyUI's /object_info (this package
and core) and, for the two third-party nodes, from allegro_devtools/workflow_check.py, so a saved
workflow is exactly what the front-end would save for the same graph (allegro_devtools.workflow_builder).
tests/server/test_workflows.py checks the committed files against the same definitions.
"""
import json

from allegro_devtools.runtime import REPO_ROOT as REPO
from allegro_devtools.workflow_builder import Node, build, live_definitions
from allegro_devtools.workflow_check import RIFE_VFI, VHS_VIDEO_COMBINE, WORKFLOW_DIR, oldest_comfyui

PROMPT = ("A red fox trots through fresh snow in a quiet pine forest at dawn. Soft golden light falls between the "
          "trunks, snowflakes drift down, and the fox stops, lifts its head and looks toward the camera. "
          "Smooth tracking shot, shallow depth of field, natural colours.")
TI2V_PROMPT = ("The scene in the picture comes to life: the camera slowly pushes in while leaves sway in a light "
               "breeze and the light shifts gently across the scene.")

MODELS_NOTE = f"""Needs ComfyUI {oldest_comfyui()} or newer.

Model files (see the README's table):

T2V: download the Hugging Face repo rhymes-ai/Allegro into
  ComfyUI/models/diffusers/Allegro/
  (model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/)
  'Load Allegro Model' and 'Load Allegro VAE' then list diffusers/Allegro.
TI2V: the repo rhymes-ai/Allegro-TI2V into ComfyUI/models/diffusers/Allegro-TI2V/
Text encoder: t5xxl_fp16.safetensors (the file Flux/SD3/Mochi use) into
  ComfyUI/models/text_encoders/  and pick it in 'Load CLIP' with type mochi.
  Or skip it and use 'Load Allegro T5 (diffusers)' on the Allegro folder's text_encoder/.
Single .safetensors files also work: the DiT in models/diffusion_models/, the VAE in models/vae/.

Memory: bf16 DiT 5.5 GB; 88x720x1280 takes long (about 10-20 min per video on an H100).
Lower width/height/length in the latent node for quick tries (multiples of 16; frames 4k or 4k+1)."""

TI2V_IMAGES_NOTE = ("Images: any size; 'resize' centre-crops them to the video's aspect (the reference), or pads or "
                    "stretches them.")
KEYFRAMES_NOTE = ("Keyframes: image i of the batch goes to frame indices[i] ('0, 44, -1': first, middle, last; "
                  "negative = from the end). Batch Images resizes later images to the first one's size, so use "
                  "images of one aspect; 'resize' then crops (the reference), pads or stretches them to the video.")
EXTEND_PROMPT = ("The camera keeps moving forward in the same scene; the motion continues smoothly and the light "
                 "stays the same.")
CLIP_LENGTH, OVERLAP = 92, 4
EXTEND_NOTE = (f"\n\nLong video: clip 1 ({CLIP_LENGTH} frames) from the first frame; clip 2 ({CLIP_LENGTH} frames) "
               f"starts with clip 1's last {OVERLAP} frames ('Allegro TI2V Continue Video') and carries on; 'Allegro "
               f"Join Clips' cross-fades the {OVERLAP} shared frames: {2 * CLIP_LENGTH - OVERLAP} frames = 12 s at "
               "15 fps. For more, continue from the joined frames and join again. Allegro-TI2V was trained on 88 "
               "frames; 92 keeps two clips at exactly 12 s.")
LOW_RES_FOLDER = "diffusers/Allegro-T2V-40x360P"
LOW_RES_NOTE = ("\n\nThis workflow: the research model rhymes-ai/Allegro-T2V-40x360P in "
                "ComfyUI/models/diffusers/Allegro-T2V-40x360P/, at the size it was trained at: 640x368, 40 frames "
                "(about 2.7 s). For rhymes-ai/Allegro-T2V-40x720P (diffusers/Allegro-T2V-40x720P) set 1280x720, "
                "40 frames. The sampler warns in the console when the size differs from the model's.")


# ---------------------------------------------------------------------------------------------
# The workflows

def text_to_video_nodes(note_extra: str = "") -> list[Node]:
    """Load CLIP -> text encode; model; empty latent -> sampler -> VAE decode (ids 1-9)."""
    return [
        Node(1, "Note", (0, 0), title="Read me: model files", width=400, text=MODELS_NOTE + note_extra),
        Node(2, "CLIPLoader", (0, 440), {"clip_name": "t5xxl_fp16.safetensors", "type": "mochi"}, width=400),
        Node(3, "AllegroVideo_TextEncode", (440, 0), {"prompt": PROMPT}, {"clip": (2, 0)}, width=420),
        Node(4, "AllegroVideo_ModelLoader", (0, 600), {"model_name": "diffusers/Allegro", "weight_dtype": "bf16"}, width=400),
        Node(5, "AllegroVideo_EmptyLatentVideo", (440, 460), width=420),
        Node(6, "AllegroVideo_Sampler", (900, 0), {"seed": 42},
             {"model": (4, 0), "positive": (3, 0), "negative": (3, 1), "latent": (5, 0)}),
        Node(7, "AllegroVideo_VAELoader", (900, 420), {"vae_name": "diffusers/Allegro"}),
        Node(8, "AllegroVideo_VAEDecode", (1300, 0), links={"samples": (6, 0), "vae": (7, 0)}),
    ]


def save_nodes(first_id: int, images: tuple[int, int], x: int, prefix: str, fps: float = 15.0) -> list[Node]:
    return [Node(first_id, "CreateVideo", (x, 0), {"fps": fps}, {"images": images}, width=300),
            Node(first_id + 1, "SaveVideo", (x, 160), {"filename_prefix": prefix, "format": "mp4", "codec": "h264"},
                 {"video": (first_id, 0)}, width=400)]


def allegro_t2v() -> list[Node]:
    return text_to_video_nodes() + save_nodes(9, (8, 0), 1700, "allegro/t2v")


def allegro_ti2v(last_frame: bool) -> list[Node]:
    nodes = text_to_video_nodes("\n\n" + TI2V_IMAGES_NOTE)
    nodes = [n for n in nodes if n.type != "AllegroVideo_EmptyLatentVideo"]
    text, model, sampler, vae = (next(n for n in nodes if n.id == i) for i in (3, 4, 6, 7))
    text.widgets["prompt"] = TI2V_PROMPT
    model.widgets["model_name"] = vae.widgets["vae_name"] = "diffusers/Allegro-TI2V"
    conditioning = Node(10, "AllegroVideo_TI2VConditioning", (440, 460),
                        links={"positive": (3, 0), "negative": (3, 1), "vae": (7, 0), "first_frame": (11, 0)}, width=420)
    loads = [Node(11, "LoadImage", (0, 820), {"image": "example.png"}, title="First frame", width=400)]
    if last_frame:
        conditioning.links["last_frame"] = (12, 0)
        loads.append(Node(12, "LoadImage", (440, 820), {"image": "example.png"}, title="Last frame", width=420))
    sampler.widgets.update(seed=1427329220, cfg=8.0)
    sampler.links.update(positive=(10, 0), negative=(10, 1), latent=(10, 2))
    return nodes + [conditioning, *loads] + save_nodes(13, (8, 0), 1700, "allegro/ti2v")


def allegro_ti2v_keyframes() -> list[Node]:
    """Three images at frames 0, 44 and the last: Load Image x3 -> Batch Images x2 -> TI2V Keyframes."""
    nodes = allegro_ti2v(last_frame=False)
    nodes = [n for n in nodes if n.type not in ("AllegroVideo_TI2VConditioning", "LoadImage")]
    note = nodes[0]
    note.text = note.text.replace(TI2V_IMAGES_NOTE, KEYFRAMES_NOTE)
    keyframes = Node(10, "AllegroVideo_TI2VKeyframes", (440, 460), {"indices": "0, 44, -1"},
                     {"positive": (3, 0), "negative": (3, 1), "vae": (7, 0), "images": (17, 0)}, width=420)
    loads = [Node(node_id, "LoadImage", (x, 1180), {"image": "example.png"}, title=title, width=300)
             for node_id, x, title in ((11, 0, "Frame 0"), (12, 320, "Frame 44"), (15, 640, "Last frame"))]
    batches = [Node(16, "ImageBatch", (0, 1000), links={"image1": (11, 0), "image2": (12, 0)}, width=300),
               Node(17, "ImageBatch", (320, 1000), links={"image1": (16, 0), "image2": (15, 0)}, width=300)]
    for node in nodes:
        if node.type == "SaveVideo":
            node.widgets["filename_prefix"] = "allegro/ti2v_keyframes"
    return nodes + [keyframes, *loads, *batches]


def allegro_ti2v_extend() -> list[Node]:
    """Two 92-frame clips, the second continuing the last 4 frames of the first, joined with the overlap
    blended: 92 + 92 - 4 = 180 frames = 12 s at 15 fps."""
    nodes = [n for n in allegro_ti2v(last_frame=False) if n.type not in ("CreateVideo", "SaveVideo")]
    note, conditioning = nodes[0], next(n for n in nodes if n.type == "AllegroVideo_TI2VConditioning")
    note.text += EXTEND_NOTE
    conditioning.widgets["length"] = CLIP_LENGTH
    second = [
        Node(20, "AllegroVideo_TextEncode", (1700, 0), {"prompt": EXTEND_PROMPT}, {"clip": (2, 0)}, width=420,
             title="Allegro Text Encode (clip 2)"),
        Node(21, "AllegroVideo_TI2VContinue", (1700, 460), {"overlap_frames": OVERLAP, "length": CLIP_LENGTH},
             {"positive": (20, 0), "negative": (20, 1), "vae": (7, 0), "previous_frames": (8, 0)}, width=420),
        Node(22, "AllegroVideo_Sampler", (2160, 0), {"seed": 2024, "cfg": 8.0},
             {"model": (4, 0), "positive": (21, 0), "negative": (21, 1), "latent": (21, 2)},
             title="Allegro Sampler (clip 2)"),
        Node(23, "AllegroVideo_VAEDecode", (2160, 460), links={"samples": (22, 0), "vae": (7, 0)},
             title="Allegro VAE Decode (clip 2)"),
        Node(24, "AllegroVideo_JoinClips", (2560, 0), {"overlap_frames": OVERLAP, "mode": "blend"},
             {"previous": (8, 0), "next": (23, 0)}, width=340),
    ]
    return nodes + second + save_nodes(25, (24, 0), 2940, "allegro/ti2v_extend")


def allegro_t2v_40x360p() -> list[Node]:
    """Text to video on the 40-frame 368x640 research model, at the size it was trained at."""
    nodes = text_to_video_nodes(LOW_RES_NOTE)
    for node in nodes:
        if node.type in ("AllegroVideo_ModelLoader", "AllegroVideo_VAELoader"):
            node.widgets["model_name" if node.type == "AllegroVideo_ModelLoader" else "vae_name"] = LOW_RES_FOLDER
        elif node.type == "AllegroVideo_EmptyLatentVideo":
            node.widgets.update(width=640, height=368, length=40)
    return nodes + save_nodes(9, (8, 0), 1700, "allegro/t2v_40x360p")


def allegro_t2v_core_upscale() -> list[Node]:
    note = ("\n\nUpscale: 'Upscale Image By' (lanczos, x1.5) is core and needs no model. For a model upscaler, "
            "put e.g. 4x-UltraSharp.pth in models/upscale_models/ and swap in 'Load Upscale Model' + "
            "'Upscale Image (using Model)'.")
    upscale = Node(9, "ImageScaleBy", (1700, 0), {"upscale_method": "lanczos", "scale_by": 1.5}, {"image": (8, 0)},
                   width=300)
    return text_to_video_nodes(note) + [upscale] + save_nodes(10, (9, 0), 2040, "allegro/t2v_upscaled")


def allegro_t2v_rife_30fps() -> list[Node]:
    note = ("\n\nNeeds two node packs (ComfyUI Manager can install both):\n"
            "- ComfyUI-Frame-Interpolation (Fannovel16): 'RIFE VFI', multiplier 2: 88 -> 175 frames (2N-1); it downloads "
            "its RIFE checkpoint itself.\n- ComfyUI-VideoHelperSuite (Kosinkadink): 'Video Combine' at 30 fps.")
    rife = Node(9, RIFE_VFI, (1700, 0), {"ckpt_name": "rife47.pth", "multiplier": 2}, {"frames": (8, 0)}, width=340)
    combine = Node(10, VHS_VIDEO_COMBINE, (2080, 0),
                   {"frame_rate": 30, "filename_prefix": "allegro/t2v_30fps", "format": "video/h264-mp4",
                    "pix_fmt": "yuv420p", "crf": 19, "save_metadata": True, "trim_to_audio": False},
                   {"images": (9, 0)}, width=360)
    return text_to_video_nodes(note) + [rife, combine]


TRAINING_LIST = "allegro_training/train.jsonl"
TRAIN_NOTE = (f"\n\nTraining: put your videos and a list in ComfyUI/input/allegro_training/ — {TRAINING_LIST}, one "
              "JSON object a line: {\"path\": \"clip1.mp4\", \"num_frames\": 120, \"height\": 720, \"width\": "
              "1280, \"cap\": \"what the clip shows\"} (the seed's format; paths relative to the list). 'Allegro "
              "Training Dataset' samples 88 frames at 720x1280 as the seed does, encodes each clip once (cached in "
              ".allegro_cache/ next to the list) and shows which rows it skipped. 'Allegro Train LoRA' trains; 'Save "
              "LoRA Weights' writes output/loras/allegro_lora_*.safetensors (copy it to models/loras/ for 'Load "
              "Allegro LoRA'); the sampler here uses the trained MODEL directly. Full size needs a big GPU (see the "
              "README's Fine-tuning memory table): lower num_frames and the size for a first try.")


def allegro_train_lora() -> list[Node]:
    """Dataset -> Allegro Train LoRA -> Save LoRA Weights + Plot Loss Graph; the trained MODEL samples a video."""
    nodes = text_to_video_nodes(TRAIN_NOTE) + save_nodes(9, (8, 0), 1700, "allegro/t2v_trained_lora")
    sampler = next(n for n in nodes if n.type == "AllegroVideo_Sampler")
    sampler.links["model"] = (33, 0)
    return nodes + [
        Node(30, "AllegroVideo_TrainingDataset", (0, 1000), {"list_file": TRAINING_LIST},
             {"clip": (2, 0), "vae": (7, 0)}, width=400),
        Node(32, "AllegroVideo_TextEncode", (440, 1000), {"prompt": "", "use_template": False, "clean_caption": False},
             {"clip": (2, 0)}, title="Empty caption (caption dropout)", width=420),
        Node(33, "AllegroVideo_TrainLoRA", (900, 1000), {},
             {"model": (4, 0), "training_set": (30, 0), "empty_caption": (32, 0), "vae": (7, 0)}, width=400),
        Node(34, "SaveLoRA", (1340, 1000), {"prefix": "loras/allegro_lora"}, {"lora": (33, 1), "steps": (33, 3)},
             width=340),
        Node(35, "LossGraphNode", (1340, 1200), {"filename_prefix": "allegro_lora_loss"}, {"loss": (33, 2)},
             width=340),
    ]


WORKFLOWS = {
    "allegro_t2v": allegro_t2v,
    "allegro_ti2v": lambda: allegro_ti2v(last_frame=False),
    "allegro_ti2v_first_last": lambda: allegro_ti2v(last_frame=True),
    "allegro_ti2v_keyframes": allegro_ti2v_keyframes,
    "allegro_ti2v_extend": allegro_ti2v_extend,
    "allegro_t2v_40x360p": allegro_t2v_40x360p,
    "allegro_t2v_core_upscale": allegro_t2v_core_upscale,
    "allegro_t2v_rife_30fps": allegro_t2v_rife_30fps,
    "allegro_train_lora": allegro_train_lora,
}


def check_ids(name: str, nodes: list[Node]) -> None:
    ids = [node.id for node in nodes]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{name}: node ids used twice: {sorted({i for i in ids if ids.count(i) > 1})}")


def main():
    definitions = live_definitions()
    WORKFLOW_DIR.mkdir(exist_ok=True)
    for name, make in WORKFLOWS.items():
        path = WORKFLOW_DIR / f"{name}.json"
        nodes = make()
        check_ids(name, nodes)
        path.write_text(json.dumps(build(nodes, definitions), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print("wrote", path.relative_to(REPO))


if __name__ == "__main__":
    main()
