"""What the shipped workflows (workflows/*.json) may contain, and the checks the tests run on them.

Node types fall in four groups: this package's, ComfyUI core's (whatever the live server's /object_info
lists), front-end-only notes, and the few third-party types below, from packs that cannot be installed
in the tests. Their definitions are copied from the packs' public source (INPUT_TYPES, widget order
and all) so the tests can check the saved widget values and the generator can draw the nodes.
"""
import copy
import json
from pathlib import Path

from .runtime import REPO_ROOT
from .workflow_api import input_specs, widget_spec, workflow_to_prompt

WORKFLOW_DIR = REPO_ROOT / "workflows"
PACKAGE_MODULE = "custom_nodes.ComfyUI-Allegro"     # python_module of this package's nodes in /object_info
NOTE_TYPES = {"Note", "MarkdownNote"}              # drawn by the front-end, never sent to the server

# The exact third-party node types the workflows may use: type -> where it comes from.
RIFE_VFI = "RIFE VFI"
VHS_VIDEO_COMBINE = "VHS_VideoCombine"
THIRD_PARTY_NODE_TYPES = {
    RIFE_VFI: "ComfyUI-Frame-Interpolation (github.com/Fannovel16/ComfyUI-Frame-Interpolation), "
              "vfi_models/rife/__init__.py RIFE_VFI",
    VHS_VIDEO_COMBINE: "ComfyUI-VideoHelperSuite (github.com/Kosinkadink/ComfyUI-VideoHelperSuite), "
                       "videohelpersuite/nodes.py VideoCombine",
}

# The RIFE checkpoints the pack downloads by itself, in its own (version) order.
RIFE_CHECKPOINTS = ["sudo_rife4_269.662_testV1_scale1.pth", "rife47.pth", "rife49.pth", "rife417.pth", "rife426.pth"]
# Video Combine's formats: image/gif, image/webp, then video/<name> for each of its video_formats/*.json.
VHS_FORMATS = ["image/gif", "image/webp"] + ["video/" + name for name in (
    "16bit-png", "8bit-png", "ProRes", "av1-webm", "ffmpeg-gif", "ffv1-mkv", "gifski", "h264-mp4", "h265-mp4",
    "nvenc_av1-mp4", "nvenc_h264-mp4", "nvenc_hevc-mp4", "webm")]
# The extra widgets VHS's web extension adds after `format` for video/h264-mp4 (video_formats/h264-mp4.json).
VHS_H264_WIDGETS = {
    "pix_fmt": [["yuv420p", "yuv420p10le"]],
    "crf": ["INT", {"default": 19, "min": 0, "max": 100, "step": 1}],
    "save_metadata": ["BOOLEAN", {"default": True}],
    "trim_to_audio": ["BOOLEAN", {"default": False}],
}

# /object_info-style definitions of the third-party nodes (Fannovel16/ComfyUI-Frame-Interpolation 26545cc,
# March 2026, and Kosinkadink/ComfyUI-VideoHelperSuite 4ee72c0, May 2026). Older RIFE VFI versions have only
# the first six widgets; the front-end then ignores the extra saved values.
THIRD_PARTY_DEFS = {
    RIFE_VFI: {
        "name": RIFE_VFI, "display_name": "RIFE VFI (recommend rife4.25+)",
        "category": "ComfyUI-Frame-Interpolation/VFI", "description": "",
        "python_module": "custom_nodes.ComfyUI-Frame-Interpolation",
        "input": {"required": {
            "ckpt_name": [RIFE_CHECKPOINTS, {"default": "rife49.pth"}],
            "frames": ["IMAGE"],
            "clear_cache_after_n_frames": ["INT", {"default": 10, "min": 1, "max": 1000}],
            "multiplier": ["INT", {"default": 2, "min": 1}],
            "fast_mode": ["BOOLEAN", {"default": True}],
            "ensemble": ["BOOLEAN", {"default": True}],
            "scale_factor": [[0.25, 0.5, 1.0, 2.0, 4.0], {"default": 1.0}],
            "dtype": [["float32", "float16", "bfloat16"], {"default": "float32"}],
            "torch_compile": ["BOOLEAN", {"default": False}],
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 64}],
        }, "optional": {"optional_interpolation_states": ["INTERPOLATION_STATES"]}},
        "input_order": {"required": ["ckpt_name", "frames", "clear_cache_after_n_frames", "multiplier", "fast_mode",
                                     "ensemble", "scale_factor", "dtype", "torch_compile", "batch_size"],
                        "optional": ["optional_interpolation_states"]},
        "output": ["IMAGE"], "output_name": ["IMAGE"], "output_is_list": [False], "output_node": False,
    },
    VHS_VIDEO_COMBINE: {
        "name": VHS_VIDEO_COMBINE, "display_name": "Video Combine 🎥🅥🅗🅢",
        "category": "Video Helper Suite 🎥🅥🅗🅢", "description": "",
        "python_module": "custom_nodes.ComfyUI-VideoHelperSuite",
        "input": {"required": {
            "images": ["IMAGE"],                       # IMAGE or LATENT
            "frame_rate": ["FLOAT", {"default": 8, "min": 1, "step": 1}],
            "loop_count": ["INT", {"default": 0, "min": 0, "max": 100, "step": 1}],
            "filename_prefix": ["STRING", {"default": "AnimateDiff"}],
            "format": [VHS_FORMATS, {"formats": {"video/h264-mp4": [[k, *v] for k, v in VHS_H264_WIDGETS.items()]}}],
            "pingpong": ["BOOLEAN", {"default": False}],
            "save_output": ["BOOLEAN", {"default": True}],
        }, "optional": {"audio": ["AUDIO"], "meta_batch": ["VHS_BatchManager"], "vae": ["VAE"]}},
        "input_order": {"required": ["images", "frame_rate", "loop_count", "filename_prefix", "format", "pingpong",
                                     "save_output"], "optional": ["audio", "meta_batch", "vae"]},
        "output": ["VHS_FILENAMES"], "output_name": ["Filenames"], "output_is_list": [False], "output_node": True,
    },
}

# Loader widgets whose choices are the files present, so the live server cannot judge them: the names the
# shipped workflows must use (where the README tells users to put the downloads).
MODEL_FILE_WIDGETS = {
    ("AllegroVideo_ModelLoader", "model_name"): {"diffusers/Allegro", "diffusers/Allegro-TI2V",
                                                 "diffusers/Allegro-T2V-40x360P"},
    ("AllegroVideo_VAELoader", "vae_name"): {"diffusers/Allegro", "diffusers/Allegro-TI2V",
                                             "diffusers/Allegro-T2V-40x360P"},
    ("AllegroVideo_T5Loader", "text_encoder"): {"diffusers/Allegro"},
    ("CLIPLoader", "clip_name"): {"t5xxl_fp16.safetensors"},
    ("LoadImage", "image"): {"example.png"},
    ("AllegroVideo_TrainingDataset", "list_file"): {"allegro_training/train.jsonl"},
}

# Tiny-weight runs (tests): names written by random_models.write_all, a size its VAE decodes fully.
TINY_T2V, TINY_TI2V = "diffusers/Allegro-tiny", "diffusers/Allegro-TI2V-tiny"
TINY_SIZE = {"width": 240, "height": 240, "length": 24}
TINY_STEPS = 2
# Training at the tiny size: a list of one short clip (write_tiny_training_list), 2 optimizer steps.
TINY_TRAINING_LIST = "tiny_training/train.jsonl"
TINY_TRAINING = {"num_frames": 8, "sample_rate": 1, "max_height": 32, "max_width": 32, "hw_thr": 0.0}
TINY_TRAINING_STEPS = 2


def write_tiny_training_list(input_dir: Path) -> str:
    """TINY_TRAINING_LIST under `input_dir`: one 12-frame 48x64 mpeg4 clip (PyAV) and its caption."""
    import av
    import numpy as np
    folder = Path(input_dir) / Path(TINY_TRAINING_LIST).parent
    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(folder / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=15)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(12):
            image = np.full((48, 64, 3), 40, np.uint8)
            image[:, (index * 5) % 64:, 2] = 220
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    row = {"path": "clip.mp4", "num_frames": 12, "height": 48, "width": 64, "cap": "a blue curtain slides right"}
    (Path(input_dir) / TINY_TRAINING_LIST).write_text(json.dumps(row) + "\n")
    return TINY_TRAINING_LIST


def oldest_comfyui() -> str:
    """The oldest ComfyUI the package (and so every shipped workflow: its core nodes are all in that
    release) needs: pyproject.toml's [tool.comfy] requires-comfyui, ">=X.Y.Z"."""
    import tomllib
    from .runtime import REPO_ROOT
    requirement = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["comfy"]["requires-comfyui"]
    return requirement.removeprefix(">=")


def workflow_paths() -> list[Path]:
    return sorted(WORKFLOW_DIR.glob("*.json"))


def load_workflow(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def node_types(workflow: dict) -> set[str]:
    return {node["type"] for node in workflow["nodes"]}


def third_party_types(workflow: dict) -> set[str]:
    return node_types(workflow) & set(THIRD_PARTY_NODE_TYPES)


def is_runnable(workflow: dict) -> bool:
    """Runnable here: no third-party node (those packs are not installed in the tests)."""
    return not third_party_types(workflow)


def package_types(object_info: dict) -> set[str]:
    return {name for name, info in object_info.items() if info.get("python_module") == PACKAGE_MODULE}


def unknown_node_types(workflow: dict, object_info: dict) -> set[str]:
    """Node types that are neither this package's, core's (in /object_info), a note, nor a documented
    third-party type. With this package loaded, /object_info holds both the package and core."""
    return {t for t in node_types(workflow)
            if t not in object_info and t not in NOTE_TYPES and t not in THIRD_PARTY_NODE_TYPES}


def all_definitions(object_info: dict) -> dict:
    return {**THIRD_PARTY_DEFS, **object_info}


def widget_problems(workflow: dict, object_info: dict) -> list[str]:
    """Every saved widget value that the node's definition would refuse (a front-end extension's widgets too),
    and every widget without a value."""
    definitions = all_definitions(object_info)
    prompt = workflow_to_prompt(workflow, definitions, saved_only=True)
    problems = []
    for node_id, node in prompt.items():
        kind_of_node = node["class_type"]
        for section, name, spec in input_specs(definitions[kind_of_node], node["inputs"].get):
            kind, choices, options = widget_spec(spec)
            if kind not in ("COMBO", "INT", "FLOAT", "STRING", "BOOLEAN"):
                continue
            where = f"node {node_id} ({kind_of_node}).{name}"
            if name not in node["inputs"]:
                if section == "required":
                    problems.append(f"{where}: no saved value")
                continue
            value = node["inputs"][name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                continue                                    # linked from another node's output
            if (kind_of_node, name) in MODEL_FILE_WIDGETS:
                if value not in MODEL_FILE_WIDGETS[(kind_of_node, name)]:
                    problems.append(f"{where}: {value!r} is not one of {sorted(MODEL_FILE_WIDGETS[(kind_of_node, name)])}")
                continue
            problem = value_problem(kind, choices, options, value)
            if problem:
                problems.append(f"{where}: {problem}")
    return problems


def value_problem(kind: str, choices, options: dict, value) -> str | None:
    if kind == "COMBO":
        return None if value in choices else f"{value!r} is not one of {choices}"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and value != int(value)):
        return f"{value!r} is not {'an integer' if kind == 'INT' else 'a number'}"
    low, high = options.get("min", float("-inf")), options.get("max", float("inf"))
    if not low <= value <= high:
        return f"{value} is outside [{low}, {high}]"
    step = options.get("step")
    if kind == "INT" and step and step > 1 and (value - options.get("min", 0)) % step:
        return f"{value} is not min + a multiple of {step}"
    return None


def link_problems(workflow: dict, object_info: dict) -> list[str]:
    """Links whose output type does not match the target input's type, or that point at missing slots."""
    definitions = all_definitions(object_info)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    problems = []
    for link_id, source, source_slot, target, target_slot, link_type in workflow["links"]:
        source_node, target_node = nodes.get(source), nodes.get(target)
        if source_node is None or target_node is None:
            problems.append(f"link {link_id}: node {source if source_node is None else target} does not exist")
            continue
        outputs = definitions.get(source_node["type"], {}).get("output")
        if outputs is not None:
            if source_slot >= len(outputs):
                problems.append(f"link {link_id}: {source_node['type']} has no output {source_slot}")
                continue
            if outputs[source_slot] != link_type:
                problems.append(f"link {link_id}: {source_node['type']} output {source_slot} is {outputs[source_slot]}, "
                                f"the link says {link_type}")
        slot = target_node["inputs"][target_slot]
        info = definitions.get(target_node["type"])
        if info is None:
            continue
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        if slot["name"] not in specs:
            problems.append(f"link {link_id}: {target_node['type']} has no input {slot['name']!r}")
            continue
        kind, _, _ = widget_spec(specs[slot["name"]])
        if kind != link_type and kind != "*":
            problems.append(f"link {link_id}: {target_node['type']}.{slot['name']} takes {kind}, gets {link_type}")
    return problems


# The nodes that make a TI2V latent (their size widgets and images are set for tiny runs).
TI2V_NODE_TYPES = ("AllegroVideo_TI2VConditioning", "AllegroVideo_TI2VKeyframes", "AllegroVideo_TI2VContinue")


def tiny_indices(indices: str, length: int, tiny_length: int) -> str:
    """A keyframe index list for a shorter clip: frames from the start scaled, from the end kept."""
    values = [int(token) for token in indices.replace(",", " ").split()]
    return ", ".join(str(v if v < 0 else v * tiny_length // length) for v in values)


def tiny_prompt(prompt: dict, first_image: str, last_image: str | None = None) -> dict:
    """The API prompt of a shipped workflow, made to run on the tiny test weights at a small size:
    tiny model folders, 240x240x24 (keyframe indices scaled to it), 2 steps, training on the tiny list
    (write_tiny_training_list) for 2 steps, the test images (the one
    linked to a TI2V node's last_frame gets `last_image`, every other Load Image `first_image`);
    CLIPLoader (which cannot load a tiny T5) swapped for the package's diffusers T5 loader under the
    same node id, so every link still holds."""
    prompt = copy.deepcopy(prompt)
    last_frame_loads = {node["inputs"]["last_frame"][0] for node in prompt.values()
                        if node["class_type"] in TI2V_NODE_TYPES and "last_frame" in node["inputs"]}
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "AllegroVideo_ModelLoader":
            ti2v = "TI2V" in inputs["model_name"]
            inputs.update(model_name=TINY_TI2V if ti2v else TINY_T2V, weight_dtype="fp32")
        elif kind == "AllegroVideo_VAELoader":
            inputs.update(vae_name=TINY_T2V, dtype="fp32")
        elif kind in ("CLIPLoader", "AllegroVideo_T5Loader"):
            prompt[node_id] = {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": TINY_T2V, "dtype": "fp32"},
                               "_meta": {"title": "tiny T5 (test)"}}
        elif kind == "AllegroVideo_EmptyLatentVideo" or kind in TI2V_NODE_TYPES:
            if isinstance(inputs.get("indices"), str):
                inputs["indices"] = tiny_indices(inputs["indices"], inputs["length"], TINY_SIZE["length"])
            inputs.update(TINY_SIZE)
        elif kind == "LoadImage":
            inputs["image"] = last_image if node_id in last_frame_loads and last_image else first_image
        elif kind == "AllegroVideo_Sampler":
            inputs["steps"] = TINY_STEPS
        elif kind == "AllegroVideo_TrainingDataset":
            inputs.update(TINY_TRAINING, list_file=TINY_TRAINING_LIST)
        elif kind == "AllegroVideo_TrainLoRA":
            inputs["steps"] = TINY_TRAINING_STEPS
    return prompt


def saved_files(entry: dict, output_dir: Path) -> list[Path]:
    """The files a finished prompt's output nodes report in /history."""
    paths = []
    for outputs in entry["outputs"].values():
        for item in outputs.get("images", []) + outputs.get("videos", []) + outputs.get("gifs", []):
            if item.get("type", "output") == "output":
                paths.append(Path(output_dir) / item.get("subfolder", "") / item["filename"])
    return paths
