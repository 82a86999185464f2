"""The error matrix's hostile inputs: bad input as a careless or hostile user sends it through /prompt —
names linked into the loaders from another node (no list check), NaN and infinity, configs out of
range or at odds with their weights, weights of the wrong kind or holding NaN, unbounded schedules,
sizes beyond the memory available. Each class has several members; test_error_matrix.py runs them
like its other cases (a clear message, nothing saved, then the fixed graph runs in the same server).
"""
import json
import math
import shutil

import torch
from safetensors.torch import load_file, save_file

import bad_inputs
from error_matrix_support import (FRAMES, PREFIX, SIZE, T2V, Case, decode, dit_file, empty_video, folder, good_dit,
                                  loader, sampler, show, size_graph, t2v, text_nodes, with_input)

# The slowest shape for the caption cleaner: broken markup (quadratic in Python's HTML parser before 3.13.5)
# that the cleaner then deletes, so the longest prefix is read.
HOSTILE_PROMPT_UNIT = "<a.png\n"
OUTSIDE = f"{PREFIX}outside"              # a folder beside models/, never a model folder
SECRET = "SECRET_outside_file"            # a file name there: no message may show it
NAME_INPUTS = {"AllegroVideo_ModelLoader": "model_name", "AllegroVideo_VAELoader": "vae_name",
               "AllegroVideo_T5Loader": "text_encoder"}


# ---------------------------------------------------------------------------------------------
# Files


def _retyped(source, path, change) -> None:
    """A copy of a safetensors file with `change(tensors)` applied (its metadata kept)."""
    from safetensors import safe_open
    with safe_open(str(source), "pt") as handle:
        metadata = handle.metadata()
    tensors = {name: tensor.clone() for name, tensor in load_file(str(source)).items()}
    change(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _set(name, value):
    def change(tensors):
        tensors[name].view(-1)[0] = value
    return change


def _cast(name, dtype):
    def change(tensors):
        tensors[name] = tensors[name].to(dtype)
    return change


def _config_copy(session, good, name: str, component: str, **changes):
    target = bad_inputs.pipeline_copy(good, session.path(f"models/diffusers/{PREFIX}{name}"), (component,))
    config = json.loads((good / component / "config.json").read_text())
    bad_inputs.replace_file(target / component / "config.json", json.dumps({**config, **changes}))


def write_hostile_inputs(session) -> None:
    tiny, good = session.tiny, session.tiny["diffusers_t2v"]
    dm, vae = f"models/diffusion_models/{PREFIX}", f"models/vae/{PREFIX}"
    # Outside the model folders: a file, a pipeline folder whose transformer/ would list a secret, a pickle.
    outside = session.path(OUTSIDE)
    outside.mkdir()
    (outside / SECRET).write_text("must never be listed")
    shutil.copy2(tiny["t2v_file"], outside / "outside_dit.safetensors")
    pipeline = bad_inputs.pipeline_copy(good, outside / "pipeline", ("transformer",))
    bad_inputs.replace_file(pipeline / "transformer" / "config.json")
    (pipeline / "transformer" / SECRET).write_text("must never be listed")
    bad_inputs.write_raw_pickle(outside / "evil.safetensors", session.marker)
    # Links: out of the model folders (refused), and from one model folder into another (fine).
    session.path(dm + "link_out.safetensors").symlink_to(outside / "outside_dit.safetensors")
    session.path(f"models/diffusers/{PREFIX}linked_out").symlink_to(pipeline, target_is_directory=True)
    session.path(dm + "link_in.safetensors").symlink_to(tiny["t2v_file"])
    # Weights of the wrong kind, or holding NaN / infinity.
    _retyped(tiny["t2v_file"], session.path(dm + "nan.safetensors"), _set("transformer_blocks.0.attn1.to_q.weight", math.nan))
    _retyped(tiny["vae_file"], session.path(vae + "inf.safetensors"), _set("decoder.conv_out.weight", math.inf))
    _retyped(tiny["t2v_file"], session.path(dm + "int.safetensors"), _cast("scale_shift_table", torch.int64))
    _retyped(tiny["vae_file"], session.path(vae + "bool.safetensors"), _cast("decoder.conv_out.bias", torch.bool))
    _retyped(tiny["t2v_file"], session.path(dm + "fp8.safetensors"),
             lambda tensors: tensors.update({k: v.to(torch.float8_e4m3fn) for k, v in tensors.items()}))
    # Configs out of range, or at odds with their weights.
    _config_copy(session, good, "rope_zero", "transformer", interpolation_scale_h=0)
    _config_copy(session, good, "heads_float", "transformer", num_attention_heads=2.5, attention_head_dim=19.2)
    _config_copy(session, good, "heads_negative", "transformer", num_attention_heads=-2, attention_head_dim=-24)
    _config_copy(session, good, "vae_groups", "vae", norm_num_groups=3)
    _config_copy(session, good, "vae_absurd", "vae", sample_size=10 ** 9)
    _config_copy(session, good, "t5_wrong_width", "text_encoder", d_model=64)
    _config_copy(session, good, "t5_absurd", "text_encoder", d_ff=10 ** 12)
    _narrow_t5_pipeline(session, good)
    # Latents with NaN, and with values so large the VAE overflows (LoadLatent's input folder).
    for name, value in (("nan", math.nan), ("huge", 3e38)):
        samples = torch.zeros(1, 4, FRAMES // 4, SIZE // 8, SIZE // 8)
        samples[0, 0, 0, 0, :] = value
        save_file({"latent_tensor": samples, "latent_format_version_0": torch.tensor([])},
                  str(session.path(f"input/{PREFIX}{name}.latent")))


def _narrow_t5_pipeline(session, good) -> None:
    """A complete, consistent pipeline folder whose T5 is 16 wide (the tiny DiT takes 32)."""
    from allegro_devtools.random_models import T5_KWARGS, build_text_encoder, save_text_encoder
    target = bad_inputs.pipeline_copy(good, session.path(f"models/diffusers/{PREFIX}t5_narrow"), ("tokenizer",))
    save_text_encoder(build_text_encoder(dict(T5_KWARGS, d_model=16, d_kv=4, d_ff=32), seed=5),
                      target / "text_encoder", sharded=False)


# ---------------------------------------------------------------------------------------------
# Graphs


def linked(loader_class: str, value) -> dict:
    """A loader whose name input is linked from a node with an "any" output (so /prompt checks nothing)."""
    graph = loader(loader_class, "unused")
    graph["name"] = bad_inputs.linked_value(value)
    graph["load"]["inputs"][NAME_INPUTS[loader_class]] = ["name", 0]
    return graph


def linked_graph(build, node: str, **values):
    """`build`'s graph with inputs of `node` linked from "any"-output nodes giving `values`."""
    def make(s):
        graph = build(s) if callable(build) else build
        for index, (name, value) in enumerate(values.items()):
            graph[f"value{index}"] = bad_inputs.linked_value(value)
            graph[node]["inputs"][name] = [f"value{index}", 0]
        return graph
    return make


def load_latent(name: str) -> dict:
    return {"class_type": "LoadLatent", "inputs": {"latent": f"{PREFIX}{name}.latent"}}


def t5_and_dit(t5_folder: str) -> dict:
    graph = t2v()
    graph["t5"]["inputs"]["text_encoder"] = t5_folder
    return graph


def sampled_from(latent_node: dict, **sampler_inputs):
    def make(s):
        graph = t2v(latent=latent_node)
        graph["sample"]["inputs"].update(sampler_inputs)
        return graph
    return make


M, V, T = "AllegroVideo_ModelLoader", "AllegroVideo_VAELoader", "AllegroVideo_T5Loader"
OUTSIDE_WORDS = (SECRET, OUTSIDE)
good_vae = lambda s: loader(V, "allegro_tiny_vae.safetensors")  # noqa: E731
good_t5 = lambda s: loader(T, T2V)  # noqa: E731
not_read = ("Loaders read only from ComfyUI's model folders",)

HOSTILE_CASES = [
    # --- names linked from another node: strictly inside the model folders ------------------------
    Case("linked name going up out of diffusers/", lambda s: linked(M, f"diffusers/../../{OUTSIDE}/pipeline"), "load",
         ("goes up a folder ('..')", *not_read), lambda s: linked(M, T2V), absent=(SECRET,)),
    Case("linked name going up out of diffusion_models/", lambda s: linked(M, f"../../{OUTSIDE}/outside_dit.safetensors"),
         "load", ("goes up a folder",), lambda s: linked(M, "allegro_tiny_t2v.safetensors")),
    Case("linked absolute path to a pickle", lambda s: linked(V, str(s.base_dir / OUTSIDE / "evil.safetensors")), "load",
         ("is an absolute path", *not_read), lambda s: linked(V, "allegro_tiny_vae.safetensors"), absent=(SECRET,)),
    Case("linked Windows-style path up", lambda s: linked(T, "diffusers\\..\\..\\" + OUTSIDE), "load",
         ("goes up a folder",), lambda s: linked(T, T2V)),
    Case("linked number as a model name", lambda s: linked(M, 42), "load",
         ("must be text naming a file or folder", "got int 42"), lambda s: linked(M, T2V)),
    Case("linked name of a folder that is not there", lambda s: linked(T, f"diffusers/{PREFIX}nowhere"), "load",
         (f"diffusers/{PREFIX}nowhere", "is not a folder in ComfyUI's model folders"), lambda s: linked(T, T2V)),
    Case("symlinked file leading out of the models", dit_file("link_out.safetensors"), "load",
         (f"{PREFIX}link_out.safetensors", "link that leads outside ComfyUI's model folders", "extra_model_paths.yaml"),
         lambda s: loader(M, f"{PREFIX}link_in.safetensors"), absent=OUTSIDE_WORDS),
    Case("symlinked hub folder leading out of the models", folder(M, "linked_out"), "load",
         ("leads outside ComfyUI's model folders",), good_dit, absent=OUTSIDE_WORDS),
    # --- NaN and infinity where numbers enter -----------------------------------------------------
    Case("cfg NaN from the API", with_input(lambda s: t2v(), "sample", cfg=math.nan), "sample",
         ("'Allegro Sampler' got cfg = nan", "finite number"), lambda s: t2v()),
    Case("denoise NaN from the API", with_input(lambda s: t2v(), "sample", denoise=math.nan), "sample",
         ("got denoise = nan", "finite number from 0 to 1"), lambda s: t2v()),
    Case("linked cfg infinity", linked_graph(lambda s: t2v(), "sample", cfg=math.inf), "sample",
         ("got cfg = inf",), lambda s: t2v()),
    Case("step cache threshold NaN", lambda s: {**t2v(), "cache": {"class_type": "AllegroVideo_StepCache", "inputs": {
        "model": ["dit", 0], "threshold": math.nan, "start": 0.1, "end": 0.9}}, "show": show(["cache", 0])}, "cache",
         ("'Allegro Step Cache' got threshold = nan",), lambda s: t2v()),
    Case("linked tile size NaN", linked_graph(lambda s: decode(empty_video()), "decode", tile_size=math.nan), "decode",
         ("'Allegro VAE Decode' got tile_size = nan", "whole number"), lambda s: decode(empty_video())),
    Case("linked width NaN", linked_graph(size_graph(), "latent", width=math.nan), "latent",
         ("width must be a whole number, got nan",), size_graph()),
    Case("latent holding NaN into the sampler", sampled_from(load_latent("nan"), denoise=0.5), "sample",
         ("The sampled latent holds", "Most likely cause: the 'latent' input already holds 8 NaN"),
         lambda s: t2v()),
    Case("cfg so large the DiT overflows", linked_graph(lambda s: t2v(), "sample", cfg=1e38), "sample",
         ("The sampled latent holds", "Most likely cause: cfg 1e+38 is far beyond the reference's 7.5"),
         lambda s: t2v()),
    Case("latent holding NaN into the decode", lambda s: decode(load_latent("nan")), "decode",
         ("The latent to decode holds 8 NaN or infinite values", "Nothing was decoded"),
         lambda s: decode(empty_video())),
    Case("latent the VAE overflows on", lambda s: decode(load_latent("huge")), "decode",
         ("The decoded frames hold", "although the input was finite: the VAE made them",
          "Most likely cause: the latent: its values reach 3e+38"),
         lambda s: decode(empty_video())),
    # --- configs checked against their weights and sane ranges -----------------------------------
    Case("RoPE interpolation scale 0", folder(M, "rope_zero"), "load",
         ("transformer", "interpolation_scale_h must be a finite number above 0, got 0"), good_dit),
    Case("float head count", folder(M, "heads_float"), "load",
         ("num_attention_heads must be a whole number", "got 2.5"), good_dit),
    Case("negative head count", folder(M, "heads_negative"), "load",
         ("num_attention_heads must be a whole number from 1", "got -2"), good_dit),
    Case("VAE config with 3 GroupNorm groups", folder(V, "vae_groups"), "load",
         ("vae/config.json: norm_num_groups=3 does not divide the channel counts [8, 8, 16, 16]",), good_vae),
    Case("VAE config with an absurd tile size", folder(V, "vae_absurd"), "load",
         ("vae/config.json: sample_size must be a whole number from 8 to 65536, got 1000000000",), good_vae),
    Case("T5 config that disagrees with its weights", folder(T, "t5_wrong_width"), "load",
         ("text_encoder/config.json does not describe its weights", "where the config means [32128, 64]"), good_t5),
    Case("T5 config with an absurd size", folder(T, "t5_absurd"), "load",
         ("d_ff must be a whole number from 1 to 65536", "got 1000000000000"), good_t5),
    Case("T5 narrower than the DiT's captions", lambda s: t5_and_dit(f"diffusers/{PREFIX}t5_narrow"), "sample",
         ("16 wide (text encoder: diffusers/error_matrix_t5_narrow)", f"Allegro DiT ({T2V})", "32 wide",
          "caption_channels"), lambda s: t2v()),
    # --- weights of the wrong kind, or holding NaN --------------------------------------------------
    Case("weights holding NaN", dit_file("nan.safetensors"), "load",
         (f"{PREFIX}nan.safetensors", "tensor 'transformer_blocks.0.attn1.to_q.weight' holds 1 NaN"), good_dit),
    Case("VAE weights holding infinity", lambda s: loader(V, f"{PREFIX}inf.safetensors"), "load",
         (f"{PREFIX}inf.safetensors", "tensor 'decoder.conv_out.weight' holds 1 NaN or infinite"), good_vae),
    Case("integer weights", dit_file("int.safetensors"), "load",
         (f"{PREFIX}int.safetensors", "tensor 'scale_shift_table' holds integer values (I64)"), good_dit),
    Case("boolean weights", lambda s: loader(V, f"{PREFIX}bool.safetensors"), "load",
         (f"{PREFIX}bool.safetensors", "tensor 'decoder.conv_out.bias' holds boolean values (BOOL)"), good_vae),
    # --- unbounded schedules --------------------------------------------------------------------------
    Case("denoise 1e-7", with_input(lambda s: t2v(), "sample", steps=1000, denoise=1e-7), "sample",
         ("steps 1000 at denoise 1e-07 would build a schedule of 1e+10 steps", "Raise denoise to at least 0.1"),
         lambda s: t2v()),
    Case("denoise 1e-300", with_input(lambda s: t2v(), "sample", denoise=1e-300), "sample",
         ("would build a schedule of", "at most 10000 are allowed"), lambda s: t2v()),
    # --- memory actually available ------------------------------------------------------------------
    Case("4096x8192x88 frames", size_graph(width=8192, height=4096, length=88), "latent",
         ("1 x 88 frames of 8192x4096 would need about 99.0 GiB of RAM", "GiB of RAM are free"), size_graph()),
]


def fp8_graph(s) -> dict:
    """The fp8-stored DiT file (floating point, unlike integer weights) samples."""
    graph = t2v()
    graph["dit"]["inputs"].update(model_name=f"{PREFIX}fp8.safetensors")
    return graph


def linked_names_graph(s) -> dict:
    """Every loader with its name linked, each a good name: linking itself is fine."""
    graph = {**text_nodes(), "dit": loader(M, "x")["load"], "sample": sampler(["latent", 0]),
             "latent": empty_video(), "vae": loader(V, "x")["load"], "show": show(["decode", 0]),
             "decode": {"class_type": "AllegroVideo_VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}}}
    for node, value in (("t5", T2V), ("dit", f"{PREFIX}link_in.safetensors"), ("vae", "allegro_tiny_vae.safetensors")):
        graph[f"{node}_name"] = bad_inputs.linked_value(value)
        graph[node]["inputs"][NAME_INPUTS[graph[node]["class_type"]]] = [f"{node}_name", 0]
    return graph


GOOD_GRAPHS = {"fp8 weights": fp8_graph, "every loader name linked": linked_names_graph}
