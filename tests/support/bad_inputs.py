"""Broken and foreign weights for the error-matrix tests, written at run time into a ComfyUI models
folder (never committed), and a listener for the live server's websocket events.

Every writer returns the paths it created so the test can remove them again. The foreign
checkpoints are synthetic: a handful of tiny tensors under the key names that identify the family
(what a checkpoint recogniser looks at), not real weights.
"""
import asyncio
import json
import os
import pickle
import queue
import shutil
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

# ---------------------------------------------------------------------------------------------
# Pickles that act when unpickled


class TouchOnUnpickle:
    """Unpickling this object calls open(marker, "w"), which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_raw_pickle(path: Path, marker: Path) -> Path:
    """A protocol-4 pickle, as old .ckpt files are."""
    path.write_bytes(pickle.dumps({"state_dict": {"weight": TouchOnUnpickle(marker)}}, protocol=4))
    return path


def write_torch_save(path: Path, marker: Path) -> Path:
    """A torch.save zip archive (today's .pt/.ckpt/.bin) holding a tensor and the payload."""
    torch.save({"pos_embed.proj.weight": torch.zeros(2, 2), "payload": TouchOnUnpickle(marker)}, path)
    return path


def payloads_work(folder: Path) -> bool:
    """Both kinds of payload really run when unpickled (checked on copies with their own marker)."""
    folder.mkdir(parents=True, exist_ok=True)
    markers = [folder / "control-raw", folder / "control-zip"]
    for marker in markers:
        marker.unlink(missing_ok=True)
    pickle.loads(write_raw_pickle(folder / "control.ckpt", markers[0]).read_bytes())
    torch.load(write_torch_save(folder / "control.pt", markers[1]), weights_only=False)
    return all(marker.exists() for marker in markers)


# ---------------------------------------------------------------------------------------------
# Single files


def write_tensors(path: Path, names_and_shapes: dict) -> Path:
    save_file({name: torch.zeros(shape) for name, shape in names_and_shapes.items()}, str(path))
    return path


# Stable Diffusion 1.5 as a full checkpoint (UNet, VAE and CLIP under their usual prefixes).
SD15_KEYS = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.0.0.bias": (320,),
    "model.diffusion_model.time_embed.0.weight": (1280, 320),
    "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    "first_stage_model.encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
    "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": (768, 768),
}
# A Flux transformer (the original BFL naming).
FLUX_KEYS = {
    "double_blocks.0.img_attn.qkv.weight": (96, 32),
    "double_blocks.0.txt_attn.qkv.weight": (96, 32),
    "single_blocks.0.linear1.weight": (128, 32),
    "img_in.weight": (32, 64),
    "txt_in.weight": (32, 64),
    "final_layer.linear.weight": (64, 32),
}
# A T5 encoder (transformers naming), e.g. one shard of t5-v1_1-xxl.
T5_KEYS = {
    "shared.weight": (128, 32),
    "encoder.embed_tokens.weight": (128, 32),
    "encoder.block.0.layer.0.SelfAttention.q.weight": (32, 32),
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 4),
    "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": (64, 32),
    "encoder.final_layer_norm.weight": (32,),
}

LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d3c0a6f0b5e1f8e1f1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7\nsize 5540000000\n")


def write_truncated(source: Path, path: Path, fraction: float = 0.6) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


# ---------------------------------------------------------------------------------------------
# diffusers (hub layout) folders, built from a good one; unchanged files are symlinked


def pipeline_copy(good: Path, target: Path, components: tuple[str, ...]) -> Path:
    """`target` with good's model_index.json and the listed component folders (files symlinked)."""
    target.mkdir(parents=True)
    shutil.copy2(good / "model_index.json", target / "model_index.json")
    for name in components:
        (target / name).mkdir()
        for file in (good / name).iterdir():
            (target / name / file.name).symlink_to(file)
    return target


def replace_file(path: Path, text: str | None = None) -> None:
    """Turn a symlinked file into a real one with new content (or remove it: text None)."""
    path.unlink()
    if text is not None:
        path.write_text(text)


# ---------------------------------------------------------------------------------------------
# The server's websocket: which node is running, and its progress


class EventListener:
    """Collects the JSON events ComfyUI sends on /ws to one client id (in a background thread)."""

    def __init__(self, url: str, client_id: str):
        self.url = url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        self.client_id = client_id
        self.events: queue.Queue = queue.Queue()
        self._ready = threading.Event()
        self._loop = None
        self._socket = None
        self._error = None
        self._thread = threading.Thread(target=self._run, name="comfy-ws", daemon=True)

    def start(self, timeout=30) -> "EventListener":
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"could not open {self.url}: {self._error}")
        return self

    def _run(self):
        import aiohttp

        async def listen():
            self._loop = asyncio.get_running_loop()
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.ws_connect(self.url, heartbeat=30) as socket:
                        self._socket = socket
                        self._ready.set()
                        async for message in socket:
                            if message.type == aiohttp.WSMsgType.TEXT:
                                self.events.put(json.loads(message.data))
            except Exception as error:      # noqa: BLE001 - reported by start()
                self._error = error
                self._ready.set()
        asyncio.run(listen())

    def drain(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()

    def wait_for(self, predicate, timeout: float) -> dict:
        """The first event (type, data) that satisfies predicate(event); TimeoutError otherwise."""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no matching websocket event")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(event):
                return event

    def stop(self):
        if self._loop is not None and self._socket is not None and not self._loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(self._socket.close(), self._loop).result(timeout=10)
            except Exception:     # noqa: BLE001 - the server may already be gone
                pass
        self._thread.join(timeout=10)


def listing(folder: Path) -> set[str]:
    """Every file under `folder`, relative to it."""
    return {os.path.relpath(os.path.join(root, name), folder)
            for root, _, names in os.walk(folder) for name in names}


# ---------------------------------------------------------------------------------------------
# A test node with an "any" output, as many packs have (rgthree, pysssss, Impact…): ComfyUI does not
# type-check what it links to, nor check a linked combo's value against its list.

LINK_NODE_PACK = "allegro_test_links"
LINK_NODE = "AllegroTest_AnyValue"
TENSOR_NODE = "AllegroTest_TensorValue"
LINK_NODE_SOURCE = '''"""Test-only nodes (written by the ComfyUI-Allegro test suite): their output is the JSON value typed
into them, or a tensor made from a JSON shape and fill, typed "*" so that it links into any input, as
the "any" outputs of many node packs do."""
import json


class AnyType(str):
    def __ne__(self, other):
        return False


class AnyValue:
    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = (AnyType("*"),)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"json_value": ("STRING", {"default": "0"})}}

    def run(self, json_value):
        return (json.loads(json_value),)


class TensorValue:
    """A tensor of any shape (IMAGE-like, or a LATENT dict) filled with one value (NaN and Infinity
    included) or, with fill null, a ramp from 0 to 1."""
    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = (AnyType("*"),)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"shape_json": ("STRING", {"default": "[1, 8, 8, 3]"}),
                             "fill_json": ("STRING", {"default": "null"}),
                             "as_latent": ("BOOLEAN", {"default": False})}}

    def run(self, shape_json, fill_json, as_latent):
        import torch
        shape, fill = json.loads(shape_json), json.loads(fill_json)
        count = 1
        for size in shape:
            count *= size
        tensor = (torch.linspace(0, 1, count) if fill is None else torch.full((count,), float(fill))).reshape(shape)
        return ({"samples": tensor} if as_latent else tensor,)


NODE_CLASS_MAPPINGS = {"%s": AnyValue, "%s": TensorValue}
''' % (LINK_NODE, TENSOR_NODE)


def write_link_node(base_dir: Path) -> None:
    """base_dir/custom_nodes/allegro_test_links/: the "any"-output test node (before ComfyUI starts)."""
    folder = Path(base_dir) / "custom_nodes" / LINK_NODE_PACK
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(LINK_NODE_SOURCE)


def linked_value(value) -> dict:
    """The test node's API entry giving `value` (any JSON value, NaN and Infinity included)."""
    return {"class_type": LINK_NODE, "inputs": {"json_value": json.dumps(value)}}


def tensor_value(shape, fill=None, as_latent: bool = False) -> dict:
    """The tensor test node's API entry: a tensor of `shape` filled with `fill` (a ramp 0..1 when None),
    as {"samples": tensor} with `as_latent`."""
    return {"class_type": TENSOR_NODE, "inputs": {"shape_json": json.dumps(list(shape)), "fill_json": json.dumps(fill),
                                                  "as_latent": as_latent}}
