"""The fuzz test's pieces: a working graph around every node of the package, hostile values of each input's
type (hypothesis strategies), wrong-kind files in the model folders, and what counts as a clear message.
Used by test_fuzz_nodes.py.

A value reaches a node two ways: typed into its widget (ComfyUI's /prompt validation sees it first) or
linked from a node with an "any" output (nothing checks it before the node runs). Tensors (IMAGE, LATENT)
come from the tensor test node, in hostile shapes and fills."""
import json
import math
import re
import shutil
from pathlib import Path

import torch
from hypothesis import strategies as st
from safetensors.torch import save_file

from allegro_devtools.workflow_check import TINY_TRAINING_LIST, write_tiny_training_list
from bad_inputs import linked_value, tensor_value
from error_matrix_support import FRAMES, SIZE, STEPS, T2V, show

NODE_PREFIX = "AllegroVideo_"
FUZZ_PREFIX = "fuzz_"                       # every file the fuzz test writes starts with this
LORA = f"{FUZZ_PREFIX}lora.safetensors"
TRAINING_SET = "ALLEGRO_TRAINING_SET"       # the training nodes' custom type
CLIP_SIZE, CLIP_FRAMES = 32, 4              # the smallest training clip the VAE and the DiT take

# --- a working graph around a node -------------------------------------------------------------------

UPSTREAM = {
    "MODEL": {"dit": {"class_type": "AllegroVideo_ModelLoader", "inputs": {"model_name": T2V, "weight_dtype": "fp32"}}},
    "CLIP": {"t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": T2V, "dtype": "fp32"}}},
    "VAE": {"vae": {"class_type": "AllegroVideo_VAELoader", "inputs": {"vae_name": T2V, "dtype": "fp32"}}},
    "LATENT": {"latent": {"class_type": "AllegroVideo_EmptyLatentVideo",
                          "inputs": {"width": SIZE, "height": SIZE, "length": FRAMES, "batch_size": 1}}},
}
TEXT = {"text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
    "clip": ["t5", 0], "prompt": "a fox", "negative_prompt": "blurry", "use_template": False, "clean_caption": True}}}
# A one-clip training set: 'Allegro Training Clip' on a tiny IMAGE batch (needs CLIP, TEXT and VAE too).
UPSTREAM[TRAINING_SET] = {
    "clip_frames": tensor_value([CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3]),
    "clip_set": {"class_type": "AllegroVideo_TrainingClip", "inputs": {
        "frames": ["clip_frames", 0], "caption": ["text", 0], "vae": ["vae", 0]}}}
SOURCE = {"MODEL": ["dit", 0], "CLIP": ["t5", 0], "VAE": ["vae", 0], "LATENT": ["latent", 0],
          TRAINING_SET: ["clip_set", 0]}
# Widgets whose defaults make full-size videos or long training: small ones keep each run to a fraction of a second.
SMALL = {"width": SIZE, "height": SIZE, "length": FRAMES, "steps": STEPS, "lora_name": LORA, "gpus": 1,
         "windows": STEPS, "rank": 1, "gradient_checkpointing": False, "list_file": TINY_TRAINING_LIST,
         "num_frames": CLIP_FRAMES, "max_height": CLIP_SIZE, "max_width": CLIP_SIZE}
SMALL_PER_NODE = {"AllegroVideo_TrainLoRA": {"steps": 1}}
# IMAGE inputs: how many images the node expects by default.
IMAGE_COUNT = {"images": 2, "previous_frames": FRAMES, "previous": FRAMES, "next": FRAMES, "frames": FRAMES}


def node_inputs(node_class) -> dict:
    """{name: (type, options)} of a node's required and optional inputs."""
    spec = node_class.INPUT_TYPES()
    return {name: (entry[0], entry[1] if len(entry) > 1 else {})
            for section in ("required", "optional") for name, entry in spec.get(section, {}).items()}


def working_graph(node_id: str, node_class) -> dict:
    """A graph in which `node_id` runs with good inputs, its first output shown (node "n")."""
    graph, inputs, small = {}, {}, {**SMALL, **SMALL_PER_NODE.get(node_id, {})}
    for name, (kind, options) in node_inputs(node_class).items():
        if isinstance(kind, list):
            inputs[name] = small.get(name, options.get("default", kind[0] if kind else None))
        elif kind == "CONDITIONING":
            graph.update({**UPSTREAM["CLIP"], **TEXT})
            inputs[name] = ["text", 0 if name == "positive" else 1]
        elif kind == TRAINING_SET:
            graph.update({**UPSTREAM["CLIP"], **TEXT, **UPSTREAM["VAE"], **UPSTREAM[TRAINING_SET]})
            inputs[name] = SOURCE[kind]
        elif kind in SOURCE:
            graph.update(UPSTREAM[kind])
            inputs[name] = SOURCE[kind]
        elif kind == "IMAGE":
            graph[f"image_{name}"] = tensor_value([IMAGE_COUNT.get(name, 1), SIZE, SIZE, 3])
            inputs[name] = [f"image_{name}", 0]
        elif kind in ("INT", "FLOAT", "STRING", "BOOLEAN") or kind == "COMBO":
            inputs[name] = small.get(name, options.get("default", 0 if kind in ("INT", "FLOAT") else ""))
            if kind == "COMBO":
                inputs[name] = small.get(name, options.get("default", (options.get("options") or [""])[0]))
        else:
            raise AssertionError(f"{node_id}: no good value known for input {name} of type {kind}")
    graph["n"] = {"class_type": node_id, "inputs": inputs}
    graph["show"] = show(["n", 0])
    return graph


def input_kind(kind) -> str:
    return "COMBO" if isinstance(kind, list) else kind


# --- hostile values -------------------------------------------------------------------------------------

BIG_TEXT = "x" * 100_000
NUMBERS = [math.nan, math.inf, -math.inf, 0, -1, -(2 ** 31), 2 ** 63, 10 ** 30, 1e300, -1e300, 0.5, 5e-324]
TEXTS = ["", " ", "\x00", BIG_TEXT, "../../outside", "C:\\Windows\\win.ini", "NaN", ", ".join(["0"] * 50_000),
         "🦊" * 1000, "{}", "cuda:99"]
WRONG_KINDS = [42, None, True, [1, 2], {"a": 1}, -1.5]
IMAGE_SHAPES = [[1, 0, SIZE, 3], [1, SIZE, 0, 3], [0, SIZE, SIZE, 3], [SIZE, SIZE, 3], [1, 1, SIZE, SIZE, 3],
                [1, SIZE, SIZE, 2], [1, SIZE, SIZE, 5], [1, 3, 5, 3], [FRAMES, SIZE, SIZE + 16, 3]]
LATENT_SHAPES = [[1, 4, 0, 8, 8], [1, 4, 2, 0, 8], [0, 4, 2, 8, 8], [1, 16, 2, 8, 8], [1, 4, 8, 8], [1, 4, 2, 7, 9],
                 [1, 4, 2, 8], [1, 4, 300, 8, 8]]
FILLS = [math.nan, math.inf, -math.inf, 1e30, -5.0, None, 0.0]
# Not a training set: lists of the wrong things, and what else a wrongly linked output holds.
NOT_TRAINING_SETS = ["", [], [{}], [{"latent": 1}], [[1, 2]], [None], {"latent": [1]}]


def hostile(kind: str, combo_files: list[str]):
    """A strategy of (how, value): how is "widget", "link" or "tensor"; the value fits `kind` in name only."""
    if kind in ("INT", "FLOAT"):
        plain = st.sampled_from(NUMBERS) | st.integers(-10 ** 12, -1) | st.floats(allow_nan=True, allow_infinity=True)
        return st.tuples(st.sampled_from(["widget", "link"]), plain)
    if kind == "STRING":
        return st.tuples(st.sampled_from(["widget", "link"]), st.sampled_from(TEXTS) | st.text(max_size=40))
    if kind == "BOOLEAN":
        return st.tuples(st.just("link"), st.sampled_from(["true", 2, math.nan, "", None]))
    if kind == "COMBO":
        names = st.sampled_from(TEXTS + combo_files) if combo_files else st.sampled_from(TEXTS)
        return st.tuples(st.sampled_from(["widget", "link"]), names) | st.tuples(st.just("link"),
                                                                                 st.sampled_from(WRONG_KINDS))
    if kind == "IMAGE":
        return st.tuples(st.just("tensor"), st.tuples(st.sampled_from(IMAGE_SHAPES + [[1, SIZE, SIZE, 3]]),
                                                       st.sampled_from(FILLS), st.just(False)))
    if kind == "LATENT":
        return st.tuples(st.just("tensor"), st.tuples(st.sampled_from(LATENT_SHAPES + [[1, 4, 2, 8, 8]]),
                                                       st.sampled_from(FILLS), st.just(True)))
    if kind == TRAINING_SET:
        tensors = st.tuples(st.sampled_from([[CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3], [1, 4, 1, 4, 4]]),
                            st.sampled_from(FILLS), st.booleans())
        return (st.tuples(st.just("link"), st.sampled_from(WRONG_KINDS + NOT_TRAINING_SETS))
                | st.tuples(st.just("tensor"), tensors))
    return None                             # MODEL, CLIP, VAE, CONDITIONING: objects, only good ones here


def with_value(graph: dict, name: str, how: str, value) -> dict:
    graph = json.loads(json.dumps(graph))
    if how == "widget":
        graph["n"]["inputs"][name] = value
    elif how == "link":
        graph["hostile"] = linked_value(value)
        graph["n"]["inputs"][name] = ["hostile", 0]
    else:
        shape, fill, as_latent = value
        graph["hostile"] = tensor_value(shape, fill, as_latent)
        graph["n"]["inputs"][name] = ["hostile", 0]
    return graph


def describe(value) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


# --- wrong-kind files --------------------------------------------------------------------------------------

def write_files(models: Path, tiny: dict) -> dict[str, list[str]]:
    """Wrong-kind files (and one good LoRA) in the model folders, the tiny training list and wrong-kind
    lists under input/: {input name: file names}."""
    dm, vae, loras = models / "diffusion_models", models / "vae", models / "loras"
    for folder in (dm, vae, loras):
        folder.mkdir(parents=True, exist_ok=True)
    (dm / f"{FUZZ_PREFIX}text.safetensors").write_text("not weights\n")
    (dm / f"{FUZZ_PREFIX}empty.gguf").write_bytes(b"")
    (dm / f"{FUZZ_PREFIX}garbage.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)
    shutil.copy2(tiny["vae_file"], dm / f"{FUZZ_PREFIX}vae_as_dit.safetensors")
    shutil.copy2(tiny["t2v_file"], vae / f"{FUZZ_PREFIX}dit_as_vae.safetensors")
    shutil.copy2(tiny["t2v_file"], loras / f"{FUZZ_PREFIX}dit_as_lora.safetensors")
    (loras / f"{FUZZ_PREFIX}text_lora.safetensors").write_text("not a lora\n")
    save_file({"diffusion_model.transformer_blocks.0.attn1.to_q.lora_down.weight": torch.full((2, 48), 0.01),
               "diffusion_model.transformer_blocks.0.attn1.to_q.lora_up.weight": torch.full((48, 2), 0.01)},
              str(loras / LORA))
    lists = write_lists(models.parent / "input")
    loras_named = [f"{FUZZ_PREFIX}dit_as_lora.safetensors", f"{FUZZ_PREFIX}text_lora.safetensors"]
    return {"list_file": lists, "existing_lora": loras_named,"model_name": [f"{FUZZ_PREFIX}text.safetensors", f"{FUZZ_PREFIX}empty.gguf", f"{FUZZ_PREFIX}garbage.gguf",
                           f"{FUZZ_PREFIX}vae_as_dit.safetensors"],
            "vae_name": [f"{FUZZ_PREFIX}dit_as_vae.safetensors"],
            "lora_name": loras_named}


def write_lists(input_dir: Path) -> list[str]:
    """The tiny training list (one clip, PyAV), and wrong-kind lists beside it: names relative to input/."""
    folder = input_dir / Path(write_tiny_training_list(input_dir)).parent
    (folder / f"{FUZZ_PREFIX}text.jsonl").write_text("not json\n")
    (folder / f"{FUZZ_PREFIX}empty.jsonl").write_bytes(b"")
    (folder / f"{FUZZ_PREFIX}binary.jsonl").write_bytes(bytes(range(256)))
    (folder / f"{FUZZ_PREFIX}rows.jsonl").write_text('{"path": 5, "num_frames": "x", "height": -1, "width": 1e999, '
                                                     '"cap": null}\n[1, 2]\n')
    (folder / f"{FUZZ_PREFIX}garbage.parquet").write_bytes(b"PAR1" + bytes(64))
    return sorted(path.relative_to(input_dir).as_posix() for path in folder.glob(f"{FUZZ_PREFIX}*"))


def remove_files(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob(f"{FUZZ_PREFIX}*"):
            path.unlink()


# --- a clear message ---------------------------------------------------------------------------------------

# Texts of Python's and torch's own exceptions: a message with one of these came from deep inside, not a check.
RAW = re.compile(r"object has no attribute|unsupported operand|not subscriptable|index out of range|positional "
                 r"argument|Expected one of|size mismatch|must match the size|Kernel size|division by zero|cannot "
                 r"convert float|invalid literal|Sizes of tensors|expected scalar type|'NoneType'|is not iterable|"
                 r"could not convert|unexpected keyword|Traceback|out of bounds|shape '\[|Calculated padded|"
                 r"non-positive|must be greater than 0|not supported between instances")
CLEAR_TYPES = ("ValueError", "CheckpointError", "FileNotFoundError")
LONGEST_MESSAGE = 3000                      # characters; user values are quoted at most a few hundred


def unclear(exception_type: str, message: str) -> str | None:
    """Why a message is not a clear one, or None."""
    if not exception_type.endswith(CLEAR_TYPES):
        return f"raised {exception_type}, not a checked error"
    if RAW.search(message):
        return f"raw exception text ({RAW.search(message)[0]!r})"
    if len(message) > LONGEST_MESSAGE:
        return f"{len(message)} characters long"
    if not message.strip():
        return "empty"
    return None
