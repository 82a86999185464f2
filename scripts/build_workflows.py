"""Write the UI-format workflows in workflows/ from the short descriptions below.

    .venv/bin/python -m scripts.build_workflows          # from the repository root; rewrites workflows/*.json

Widget order, defaults, input and output types come from a live ComfyUI's /object_info (this package
and core) and, for the two third-party nodes, from allegro_devtools/workflow_check.py, so a saved
workflow is exactly what the front-end would save for the same graph (allegro_devtools.workflow_builder).
tests/test_workflows.py checks the committed files against the same definitions.
"""
import json

from allegro_devtools.runtime import REPO_ROOT as REPO
from allegro_devtools.workflow_builder import Node, build, live_definitions
from allegro_devtools.workflow_check import RIFE_VFI, VHS_VIDEO_COMBINE, WORKFLOW_DIR

PROMPT = ("A red fox trots through fresh snow in a quiet pine forest at dawn. Soft golden light falls between the "
          "trunks, snowflakes drift down, and the fox stops, lifts its head and looks toward the camera. "
          "Smooth tracking shot, shallow depth of field, natural colours.")
TI2V_PROMPT = ("The scene in the picture comes to life: the camera slowly pushes in while leaves sway in a light "
               "breeze and the light shifts gently across the scene.")

MODELS_NOTE = """Model files (see the README's table):

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
    nodes = text_to_video_nodes("\n\nImages: any size; they are centre-cropped to the video's aspect and resized.")
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


WORKFLOWS = {
    "allegro_t2v": allegro_t2v,
    "allegro_ti2v": lambda: allegro_ti2v(last_frame=False),
    "allegro_ti2v_first_last": lambda: allegro_ti2v(last_frame=True),
    "allegro_t2v_core_upscale": allegro_t2v_core_upscale,
    "allegro_t2v_rife_30fps": allegro_t2v_rife_30fps,
}


def main():
    definitions = live_definitions()
    WORKFLOW_DIR.mkdir(exist_ok=True)
    for name, make in WORKFLOWS.items():
        path = WORKFLOW_DIR / f"{name}.json"
        path.write_text(json.dumps(build(make(), definitions), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print("wrote", path.relative_to(REPO))


if __name__ == "__main__":
    main()
