"""The error matrix's graph pieces (API format, tiny weights, small sizes) and its session with a live
server: bad files written into the models folders, /prompt and /history helpers. Used by
test_error_matrix.py."""
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import requests
from PIL import Image

import bad_inputs

T2V, TI2V = "diffusers/Allegro-tiny", "diffusers/Allegro-TI2V-tiny"
FRAMES, SIZE, STEPS = 8, 64, 2           # small enough that a whole graph runs in seconds on 2 CPU cores
PREFIX = "error_matrix_"                 # every file and folder the module writes starts with this


# ---------------------------------------------------------------------------------------------
# Graph pieces (API format)

def show(source) -> dict:
    """An output node that accepts anything: lets a graph end at any node."""
    return {"class_type": "PreviewAny", "inputs": {"source": source}}


LOADER_INPUTS = {
    "AllegroVideo_ModelLoader": lambda name: {"model_name": name, "weight_dtype": "fp32"},
    "AllegroVideo_VAELoader": lambda name: {"vae_name": name, "dtype": "fp32"},
    "AllegroVideo_T5Loader": lambda name: {"text_encoder": name, "dtype": "fp32"},
}


def loader(node_class: str, name: str) -> dict:
    return {"load": {"class_type": node_class, "inputs": LOADER_INPUTS[node_class](name)}, "show": show(["load", 0])}


def text_nodes(prompt="a red fox runs through fresh snow", negative="blurry", use_template=False) -> dict:
    return {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": LOADER_INPUTS["AllegroVideo_T5Loader"](T2V)},
        "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
            "clip": ["t5", 0], "prompt": prompt, "negative_prompt": negative, "use_template": use_template,
            "clean_caption": True}},
    }


def sampler(latent, positive=("text", 0), negative=("text", 1), steps=STEPS, seed=7) -> dict:
    return {"class_type": "AllegroVideo_Sampler", "inputs": {
        "model": ["dit", 0], "positive": list(positive), "negative": list(negative), "latent": latent,
        "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": "euler_ancestral",
        "scheduler": "linspace (reference)", "noise_stream": "reference", "denoise": 1.0}}


def empty_video(width=SIZE, height=SIZE, length=FRAMES, batch_size=1) -> dict:
    return {"class_type": "AllegroVideo_EmptyLatentVideo",
            "inputs": {"width": width, "height": height, "length": length, "batch_size": batch_size}}


def t2v(model=T2V, latent: dict | None = None, steps=STEPS, **text) -> dict:
    """Text-to-video up to the sampled latent."""
    return {**text_nodes(**text),
            "dit": {"class_type": "AllegroVideo_ModelLoader", "inputs": LOADER_INPUTS["AllegroVideo_ModelLoader"](model)},
            "latent": latent or empty_video(),
            "sample": sampler(["latent", 0], steps=steps),
            "show": show(["sample", 0])}


def ti2v(model=TI2V, image: dict | None = None, with_ti2v_node=True, first_frame=True, width=SIZE, height=SIZE,
         length=FRAMES) -> dict:
    """Image-to-video up to the sampled latent; `image` replaces the LoadImage node ("image") and may
    bring more nodes ("image" must be the one that feeds the first frame)."""
    graph = {**text_nodes(),
             "dit": {"class_type": "AllegroVideo_ModelLoader", "inputs": LOADER_INPUTS["AllegroVideo_ModelLoader"](model)},
             "vae": {"class_type": "AllegroVideo_VAELoader", "inputs": LOADER_INPUTS["AllegroVideo_VAELoader"](TI2V)},
             **(image or {"image": load_image("first.png")}),
             "ti2v": {"class_type": "AllegroVideo_TI2VConditioning", "inputs": {
                 "positive": ["text", 0], "negative": ["text", 1], "vae": ["vae", 0], "first_frame": ["image", 0],
                 "width": width, "height": height, "length": length}},
             "show": show(["sample", 0])}
    if not first_frame:
        del graph["ti2v"]["inputs"]["first_frame"]
    if with_ti2v_node:
        graph["sample"] = sampler(["ti2v", 2], positive=("ti2v", 0), negative=("ti2v", 1))
    else:
        graph["sample"] = sampler(["latent", 0])
        graph["latent"] = empty_video()
        del graph["ti2v"]
        graph["show"] = show(["sample", 0])
    return graph


def load_image(name: str) -> dict:
    return {"class_type": "LoadImage", "inputs": {"image": PREFIX + name}}


def decode(latent_node: dict) -> dict:
    return {"vae": {"class_type": "AllegroVideo_VAELoader", "inputs": LOADER_INPUTS["AllegroVideo_VAELoader"](T2V)},
            "latent": latent_node,
            "decode": {"class_type": "AllegroVideo_VAEDecode", "inputs": {"samples": ["latent", 0], "vae": ["vae", 0]}},
            "show": show(["decode", 0])}


def latent_into_sampler(latent_node: dict) -> dict:
    return t2v(latent=latent_node)


def reference_graph(steps=STEPS, frames=FRAMES, size=SIZE, tiles: dict | None = None, tag="good",
                    save_latent=True) -> dict:
    """The whole text-to-video graph, saving the latent (unless told not to) and the decoded frames."""
    graph = t2v(steps=steps, latent=empty_video(size, size, frames))
    del graph["show"]
    graph["vae"] = {"class_type": "AllegroVideo_VAELoader", "inputs": LOADER_INPUTS["AllegroVideo_VAELoader"](T2V)}
    graph["decode"] = {"class_type": "AllegroVideo_VAEDecode",
                       "inputs": {"samples": ["sample", 0], "vae": ["vae", 0], **(tiles or {})}}
    if save_latent:
        graph["save_latent"] = {"class_type": "SaveLatent",
                                "inputs": {"samples": ["sample", 0], "filename_prefix": f"{PREFIX}{tag}/latent"}}
    graph["save_frames"] = {"class_type": "SaveImage",
                            "inputs": {"images": ["decode", 0], "filename_prefix": f"{PREFIX}{tag}/frame"}}
    return graph


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Case:
    id: str
    bad: Callable[["Session"], dict]
    node: str                       # the node whose error the user sees
    expect: tuple[str, ...]         # all of these are in the message
    good: Callable[["Session"], dict]
    validation: bool = False        # refused by /prompt itself (400) rather than while running
    absent: tuple[str, ...] = ()    # none of these may be in the message (e.g. what lies outside the models)


def dit_file(name):
    return lambda s: loader("AllegroVideo_ModelLoader", f"{PREFIX}{name}")


def good_dit(s):
    return loader("AllegroVideo_ModelLoader", "allegro_tiny_t2v.safetensors")


def folder(component_loader, name):
    return lambda s: loader(component_loader, f"diffusers/{PREFIX}{name}")


def with_input(build, node, **inputs):
    def make(s):
        graph = build(s) if callable(build) else build
        graph[node]["inputs"].update(inputs)
        return graph
    return make


def size_graph(**inputs):
    return lambda s: {"latent": empty_video(**{**dict(width=SIZE, height=SIZE, length=FRAMES), **inputs}),
                      "show": show(["latent", 0])}


# ---------------------------------------------------------------------------------------------
# The session: bad files, input images, a websocket listener


class Session:
    def __init__(self, server, base_dir: Path, tiny_models: dict):
        self.server, self.base_dir, self.tiny = server, base_dir, tiny_models
        self.models, self.input, self.output = base_dir / "models", base_dir / "input", base_dir / "output"
        self.marker = base_dir / f"{PREFIX}PICKLE_WAS_UNPICKLED"
        self.created: list[Path] = []
        self.seen: list[tuple[str, str, str]] = []       # (case, where, message) for the record
        self.client_id = str(uuid.uuid4())
        self.events = bad_inputs.EventListener(server.url, self.client_id)

    def path(self, relative: str) -> Path:
        path = self.base_dir / relative
        self.created.append(path)
        return path

    def write_everything(self):
        m, tiny = "models/", self.tiny
        write, marker = bad_inputs.write_tensors, self.marker
        dm, vae = m + "diffusion_models/" + PREFIX, m + "vae/" + PREFIX
        self.path(dm + "not_a_model.safetensors").write_text("These are not the weights you are looking for.\n" * 4)
        self.path(dm + "empty.safetensors").write_bytes(b"")
        self.path(dm + "lfs_pointer.safetensors").write_bytes(bad_inputs.LFS_POINTER)
        bad_inputs.write_truncated(tiny["t2v_file"], self.path(dm + "truncated.safetensors"))
        write(self.path(dm + "sd15.safetensors"), bad_inputs.SD15_KEYS)
        write(self.path(dm + "flux.safetensors"), bad_inputs.FLUX_KEYS)
        write(self.path(dm + "t5.safetensors"), bad_inputs.T5_KEYS)
        shutil.copy2(tiny["t2v_file"], self.path(vae + "dit.safetensors"))
        # Pickles: under pickle suffixes, and disguised with a .safetensors name.
        bad_inputs.write_raw_pickle(self.path(dm + "evil.ckpt"), marker)
        bad_inputs.write_torch_save(self.path(vae + "evil.pt"), marker)
        bad_inputs.write_raw_pickle(self.path(dm + "renamed_ckpt.safetensors"), marker)
        bad_inputs.write_torch_save(self.path(dm + "renamed_pt.safetensors"), marker)
        # diffusers folders derived from the good one.
        good, folders = tiny["diffusers_t2v"], m + "diffusers/" + PREFIX
        pickled = bad_inputs.pipeline_copy(good, self.path(folders + "pickled"), ("transformer",))
        bad_inputs.replace_file(pickled / "transformer" / "diffusion_pytorch_model.safetensors")
        bad_inputs.write_torch_save(pickled / "transformer" / "diffusion_pytorch_model.bin", marker)
        no_config = bad_inputs.pipeline_copy(good, self.path(folders + "no_config"), ("transformer",))
        bad_inputs.replace_file(no_config / "transformer" / "config.json")
        no_shard = bad_inputs.pipeline_copy(good, self.path(folders + "no_shard"), ("text_encoder",))
        self.missing_shard = sorted((no_shard / "text_encoder").glob("model-*-of-*.safetensors"))[-1].name
        bad_inputs.replace_file(no_shard / "text_encoder" / self.missing_shard)
        for name, change in (("wrong_layers", {"num_layers": 3}), ("wrong_heads", {"num_attention_heads": 3})):
            folder = bad_inputs.pipeline_copy(good, self.path(folders + name), ("transformer",))
            config = json.loads((good / "transformer" / "config.json").read_text())
            bad_inputs.replace_file(folder / "transformer" / "config.json", json.dumps({**config, **change}))
        # Input images: RGB, RGBA, and a single pixel.
        gradient = np.linspace(0, 255, 48 * 80 * 3).reshape(48, 80, 3).astype(np.uint8)
        Image.fromarray(gradient).save(self.path(f"input/{PREFIX}first.png"))
        rgba = np.random.default_rng(0).integers(0, 255, (40, 40, 4), dtype=np.uint8)
        Image.fromarray(rgba, "RGBA").save(self.path(f"input/{PREFIX}alpha.png"))
        Image.new("RGB", (1, 1), (200, 30, 90)).save(self.path(f"input/{PREFIX}pixel.png"))

    def remove_everything(self):
        for path in reversed(self.created):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self.marker.unlink(missing_ok=True)

    # --- /prompt --------------------------------------------------------------------------------
    def post(self, graph: dict) -> dict:
        response = requests.post(self.server.url + "/prompt", timeout=60,
                                 data=json.dumps({"prompt": graph, "client_id": self.client_id}))
        answer = response.json()
        answer["http_status"] = response.status_code
        return answer

    def submit(self, graph: dict) -> str:
        answer = self.post(graph)
        assert answer["http_status"] == 200, f"/prompt refused the graph: {json.dumps(answer, indent=1)[:3000]}"
        return answer["prompt_id"]

    def run(self, graph: dict, timeout=300) -> dict:
        return self.server.wait(self.submit(graph), timeout)

    def run_ok(self, graph: dict, timeout=300) -> dict:
        entry = self.run(graph, timeout)
        assert entry["status"]["status_str"] == "success", _status_text(entry)
        return entry

    def log_offset(self) -> int:
        return self.server.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.server.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")


def _status_text(entry: dict) -> str:
    messages = dict(entry["status"].get("messages", []))
    error = messages.get("execution_error")
    return error["exception_message"] if error else json.dumps(entry["status"])[:3000]


def validation_message(answer: dict, node: str) -> str:
    """What the front-end shows for a node that failed validation: each error's message and details."""
    errors = answer.get("node_errors", {}).get(node, {}).get("errors", [])
    assert errors, f"no validation error for node {node!r}: {json.dumps(answer, indent=1)[:3000]}"
    return "\n".join(f"{e['message']}: {e['details']}" for e in errors)


def assert_readable(message: str):
    assert message.strip(), "empty message"
    assert "Traceback (most recent call last)" not in message, message
    assert not message.lstrip().startswith('File "'), message
