"""What a user sees when something is wrong, through the real ComfyUI /prompt path of a live server.

Each case of the matrix posts a broken graph to /prompt and checks the message the user would be
shown — /prompt's 400 node_errors for what ComfyUI's validation refuses, else the
execution_error's exception_message in /history — for the offending input or file and what is
allowed (never a bare stack trace); then the corrected graph must run in the same server.
Bad weights are written into the session's models folders at run time and removed afterwards;
pickles carry a payload that would create a marker file, which must never appear.
Cancelling during sampling and during VAE decode leaves no output behind and the next run is
exactly an uninterrupted run's. One test, in whatever order it runs, sends a representative set of
bad graphs and a cancelled run, then a good prompt, which must still give exactly the reference video.

The messages seen are written to test-output/error_matrix.md for a person to read.
"""
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

import bad_inputs
from hostile_input_cases import GOOD_GRAPHS, HOSTILE_CASES, HOSTILE_PROMPT_UNIT, write_hostile_inputs
from error_matrix_support import (FRAMES, PREFIX, SIZE, T2V, Case, Session, assert_readable, decode, dit_file,
                                  empty_video, folder, good_dit, latent_into_sampler, load_image, loader,
                                  reference_graph, show, size_graph, t2v, text_nodes, ti2v, validation_message,
                                  with_input)

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def session(comfy_server, base_dir, tiny_models, test_output):
    session = Session(comfy_server, base_dir, tiny_models)
    session.remove_everything()          # leftovers of an interrupted earlier run
    session.created.clear()
    session.write_everything()
    write_hostile_inputs(session)
    session.events.start()
    yield session
    session.events.stop()
    session.remove_everything()
    lines = ["# Error matrix: what the user sees", "",
             "Written by tests/server/test_error_matrix.py (ComfyUI /prompt path, live server).", "",
             "| case | shown by | message |", "|---|---|---|"]
    for case, where, message in session.seen:
        lines.append(f"| {case} | {where} | {message.strip().replace(chr(10), ' ').replace('|', '/')} |")
    (test_output / "error_matrix.md").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def reference(session):
    """An uninterrupted run of the whole graph: its latent and decoded frames."""
    return saved_outputs(session, session.run_ok(reference_graph(tag="reference")))


def saved_outputs(session: Session, entry: dict) -> dict:
    latent = entry["outputs"]["save_latent"]["latents"][0]
    frames = entry["outputs"]["save_frames"]["images"]
    file = lambda item: session.output / item["subfolder"] / item["filename"]       # noqa: E731
    return {"latent": load_file(str(file(latent)))["latent_tensor"],
            "frames": np.stack([np.asarray(Image.open(file(item))) for item in frames])}


# ---------------------------------------------------------------------------------------------
# The matrix of refusals

def image_batch(count: int) -> dict:
    return {"one": load_image("first.png"),
            "image": {"class_type": "RepeatImageBatch", "inputs": {"image": ["one", 0], "amount": count}}}




CORE_IMAGE_LATENT = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}}
CORE_SD3_LATENT = {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}}
CORE_HUNYUAN_LATENT = {"class_type": "EmptyHunyuanLatentVideo",
                       "inputs": {"width": SIZE, "height": SIZE, "length": 9, "batch_size": 1}}
PICKLE_WORDS = ("pickle", "never", "safetensors")

CASES = [
    # --- weights files ----------------------------------------------------------------------
    Case("text file named .safetensors", dit_file("not_a_model.safetensors"), "load",
         (f"{PREFIX}not_a_model.safetensors", "is not a safetensors file", "Only .safetensors"), good_dit),
    Case("empty file", dit_file("empty.safetensors"), "load", (f"{PREFIX}empty.safetensors", "empty (0 bytes)"),
         good_dit),
    Case("git-lfs pointer", dit_file("lfs_pointer.safetensors"), "load",
         (f"{PREFIX}lfs_pointer.safetensors", "Git LFS pointer", "git lfs pull"), good_dit),
    Case("truncated safetensors", dit_file("truncated.safetensors"), "load",
         (f"{PREFIX}truncated.safetensors", "is truncated", "download it again"), good_dit),
    Case("model file that is not there", dit_file("missing.safetensors"), "load",
         ("model_name", f"{PREFIX}missing.safetensors", "is not a .safetensors or .gguf file in models/diffusion_models/",
          "Available:", "allegro_tiny_t2v.safetensors"), good_dit, validation=True),
    Case("SD1.5 checkpoint as the DiT", dit_file("sd15.safetensors"), "load",
         (f"{PREFIX}sd15.safetensors", "Stable Diffusion 1.5", "not an Allegro text-to-video transformer",
          "Load Allegro Model"), good_dit),
    Case("Flux transformer as the DiT", dit_file("flux.safetensors"), "load",
         (f"{PREFIX}flux.safetensors", "a Flux transformer", "not an Allegro"), good_dit),
    Case("T5 encoder as the DiT", dit_file("t5.safetensors"), "load",
         (f"{PREFIX}t5.safetensors", "a T5 text encoder", "not an Allegro"), good_dit),
    Case("DiT as the VAE", lambda s: loader("AllegroVideo_VAELoader", f"{PREFIX}dit.safetensors"), "load",
         (f"{PREFIX}dit.safetensors", "Allegro text-to-video transformer", "not the Allegro video VAE",
          "Load Allegro VAE"), lambda s: loader("AllegroVideo_VAELoader", "allegro_tiny_vae.safetensors")),
    # Pickles: never offered, never opened, however they are named or wherever they are.
    Case(".ckpt pickle in diffusion_models", dit_file("evil.ckpt"), "load",
         ("model_name", f"{PREFIX}evil.ckpt", "PyTorch pickle", "never", ".safetensors", "Available:",
          "allegro_tiny_t2v.safetensors"), good_dit, validation=True),
    Case(".pt pickle in vae", lambda s: loader("AllegroVideo_VAELoader", f"{PREFIX}evil.pt"), "load",
         ("vae_name", f"{PREFIX}evil.pt", "PyTorch pickle", "never", ".safetensors", "Available:",
          "allegro_tiny_vae.safetensors"),
         lambda s: loader("AllegroVideo_VAELoader", "allegro_tiny_vae.safetensors"), validation=True),
    Case("pickle renamed .safetensors", dit_file("renamed_ckpt.safetensors"), "load",
         (f"{PREFIX}renamed_ckpt.safetensors", "pickle header", *PICKLE_WORDS), good_dit),
    Case("torch.save zip renamed .safetensors", dit_file("renamed_pt.safetensors"), "load",
         (f"{PREFIX}renamed_pt.safetensors", "zip archive", *PICKLE_WORDS), good_dit),
    Case("diffusers folder with only a .bin pickle", folder("AllegroVideo_ModelLoader", "pickled"), "load",
         ("transformer", "diffusion_pytorch_model.bin", *PICKLE_WORDS), good_dit),
    # --- diffusers folders --------------------------------------------------------------------
    Case("diffusers folder without transformer/config.json", folder("AllegroVideo_ModelLoader", "no_config"), "load",
         (f"{PREFIX}no_config", "transformer/ folder has no config.json", "diffusion_pytorch_model.safetensors"),
         lambda s: loader("AllegroVideo_ModelLoader", T2V)),
    Case("diffusers folder missing a T5 shard", folder("AllegroVideo_T5Loader", "no_shard"), "load",
         ("is listed in model.safetensors.index.json but missing", "text_encoder"),
         lambda s: loader("AllegroVideo_T5Loader", T2V)),
    Case("config.json with another layer count", folder("AllegroVideo_ModelLoader", "wrong_layers"), "load",
         ("config.json", "num_layers=3", "tensors say 2"), lambda s: loader("AllegroVideo_ModelLoader", T2V)),
    Case("config.json with another head count", folder("AllegroVideo_ModelLoader", "wrong_heads"), "load",
         ("config.json", "3 heads", "48 wide", "fix it"), lambda s: loader("AllegroVideo_ModelLoader", T2V)),
    # --- T2V / TI2V mix-ups -----------------------------------------------------------------
    Case("TI2V conditioning into the T2V model", lambda s: ti2v(model=T2V), "sample",
         ("Allegro-TI2V image frames", "Allegro T2V", "Load the Allegro-TI2V transformer"), lambda s: ti2v()),
    Case("TI2V model without the TI2V node", lambda s: ti2v(with_ti2v_node=False), "sample",
         ("Allegro-TI2V needs image conditioning", "Allegro TI2V Conditioning"), lambda s: ti2v()),
    # --- sizes --------------------------------------------------------------------------------
    Case("width not a multiple of 16", size_graph(width=100), "latent",
         ("width must be a multiple of 16", "got 100", "use 96 or 112"), size_graph()),
    Case("height not a multiple of 16 (TI2V node)", lambda s: ti2v(height=200), "ti2v",
         ("height must be a multiple of 16", "got 200", "use 192 or 208"), lambda s: ti2v()),
    Case("90 frames", size_graph(length=90), "latent",
         ("length must be a multiple of 4 or one more", "got 90", "88, 89 or 92"), size_graph(length=88)),
    Case("90 frames (TI2V node)", lambda s: ti2v(length=90), "ti2v",
         ("length must be a multiple of 4 or one more", "got 90"), lambda s: ti2v()),
    Case("width 0", size_graph(width=0), "latent", ("width", "Value 0 smaller than min of 16"), size_graph(),
         validation=True),
    Case("negative height", size_graph(height=-64), "latent", ("height", "Value -64 smaller than min of 16"),
         size_graph(), validation=True),
    Case("length 0", size_graph(length=0), "latent", ("length", "Value 0 smaller than min of 4"), size_graph(),
         validation=True),
    Case("width above the widget's max", size_graph(width=9600), "latent",
         ("width", "Value 9600 bigger than max of 8192"), size_graph(), validation=True),
    Case("size that cannot fit in memory", size_graph(width=8192, height=8192, length=1024, batch_size=4), "latent",
         ("4 x 1024 frames of 8192x8192", "GiB", "Lower the length, the size or the batch"), size_graph()),
    # --- TI2V images ----------------------------------------------------------------------------
    Case("TI2V without a first frame", lambda s: ti2v(first_frame=False), "ti2v",
         ("Required input is missing", "first_frame"), lambda s: ti2v(), validation=True),
    Case("TI2V with a batch of 3 images", lambda s: ti2v(image=image_batch(3)), "ti2v",
         ("first_frame holds 3 images", "exactly one", "Image From Batch"), lambda s: ti2v(image=image_batch(1))),
    # --- latents and types -----------------------------------------------------------------------
    Case("core image latent into the sampler", lambda s: latent_into_sampler(CORE_IMAGE_LATENT), "sample",
         ("latent", "[1, 4, 8, 8]", "[batch, 4, frames, height/8, width/8]", "Allegro Empty Latent Video"),
         lambda s: latent_into_sampler(empty_video())),
    Case("SD3 16-channel latent into the sampler", lambda s: latent_into_sampler(CORE_SD3_LATENT), "sample",
         ("latent", "[1, 16, 8, 8]", "[batch, 4, frames, height/8, width/8]"),
         lambda s: latent_into_sampler(empty_video())),
    Case("Hunyuan 16-channel video latent into the sampler", lambda s: latent_into_sampler(CORE_HUNYUAN_LATENT),
         "sample", ("latent", "[1, 16, 3, 8, 8]", "[batch, 4, frames, height/8, width/8]"),
         lambda s: latent_into_sampler(empty_video())),
    Case("core image latent into the decode", lambda s: decode(CORE_IMAGE_LATENT), "decode",
         ("samples", "Allegro VAE Decode", "[1, 4, 8, 8]", "[batch, 4, frames, height/8, width/8]"),
         lambda s: decode(empty_video())),
    Case("SD3 16-channel latent into the decode", lambda s: decode(CORE_SD3_LATENT), "decode",
         ("samples", "[1, 16, 8, 8]", "[batch, 4, frames, height/8, width/8]"), lambda s: decode(empty_video())),
    Case("IMAGE into the sampler's latent", lambda s: latent_into_sampler(load_image("first.png")), "sample",
         ("latent", "received_type(IMAGE) mismatch input_type(LATENT)"),
         lambda s: latent_into_sampler(empty_video()), validation=True),
    Case("IMAGE into the decode's vae", with_input(lambda s: {**decode(empty_video()), "img": load_image("first.png")},
                                                   "decode", vae=["img", 0]), "decode",
         ("vae", "received_type(IMAGE) mismatch input_type(VAE)"), lambda s: decode(empty_video()), validation=True),
]


MATRIX = CASES + HOSTILE_CASES


@pytest.mark.parametrize("case", MATRIX, ids=[case.id for case in MATRIX])
def test_refused_with_a_clear_message_then_the_fix_runs(session, case):
    before = bad_inputs.listing(session.output)
    answer = session.post(case.bad(session))
    if case.validation:
        assert answer["http_status"] == 400, json.dumps(answer, indent=1)[:3000]
        message = validation_message(answer, case.node)
        where = "/prompt 400"
    else:
        assert answer["http_status"] == 200, json.dumps(answer, indent=1)[:3000]
        entry = session.server.wait(answer["prompt_id"], timeout=300)
        assert entry["status"]["status_str"] == "error", f"expected an error, got {json.dumps(entry['status'])[:2000]}"
        error = dict(entry["status"]["messages"])["execution_error"]
        assert error["node_id"] == case.node, (error["node_id"], error["exception_message"])
        message = error["exception_message"]
        where = f"execution_error ({error['node_type']})"
    session.seen.append((case.id, where, message))
    assert_readable(message)
    missing = [text for text in case.expect if text not in message]
    assert not missing, f"{missing} not in the message:\n{message}"
    leaked = [text for text in case.absent if text in message]
    assert not leaked, f"{leaked} must not be in the message:\n{message}"
    assert not session.marker.exists(), "a pickle was unpickled"
    assert bad_inputs.listing(session.output) == before, "the refused graph left files in the output folder"
    session.run_ok(case.good(session))


# ---------------------------------------------------------------------------------------------
# Inputs that must work

def long_prompt() -> str:
    """About 700 T5 tokens: numbered sentences, so the dropped tail is recognisable."""
    return " ".join(f"Scene {n}: the fox passes tree number {n}." for n in range(1, 71))


def test_the_pickle_payloads_are_real_and_never_ran(session, base_dir):
    assert bad_inputs.payloads_work(base_dir / f"{PREFIX}control")
    shutil.rmtree(base_dir / f"{PREFIX}control")
    graphs = [loader("AllegroVideo_ModelLoader", f"{PREFIX}{name}")
              for name in ("evil.ckpt", "renamed_ckpt.safetensors", "renamed_pt.safetensors")]
    graphs += [loader("AllegroVideo_VAELoader", f"{PREFIX}evil.pt"), loader("AllegroVideo_ModelLoader", f"diffusers/{PREFIX}pickled")]
    for graph in graphs:
        answer = session.post(graph)
        if answer["http_status"] == 200:
            assert session.server.wait(answer["prompt_id"])["status"]["status_str"] == "error"
        else:
            assert answer["http_status"] == 400
    assert not session.marker.exists()


def test_a_prompt_over_512_tokens_is_truncated_with_a_warning(session):
    offset = session.log_offset()
    session.run_ok({**text_nodes(prompt=long_prompt()), "show": show(["text", 0])})
    log = session.log_since(offset)
    warning = next((line for line in log.splitlines() if "T5 reads at most 512 tokens; dropped:" in line), None)
    assert warning is not None, log[-3000:]
    session.seen.append(("prompt over 512 tokens (succeeds)", "server log warning", warning[:300] + " …"))
    dropped = warning.split("dropped:", 1)[1]
    assert "tree number 70" in dropped and "scene 1:" not in dropped.lower()


@pytest.mark.parametrize("prompt", ["", "   ", "Ein Fuchs läuft durch den Schnee — 雪の中を走る狐 🦊, «ночь»"],
                         ids=["empty", "blank", "non-ASCII"])
def test_unusual_prompts_run(session, prompt):
    session.run_ok(t2v(prompt=prompt))
    session.seen.append((f"{'non-ASCII' if prompt.strip() else repr(prompt)} prompt (succeeds)", "-", "runs"))


@pytest.mark.parametrize("name", list(GOOD_GRAPHS))
def test_round_two_inputs_that_must_work(session, name):
    session.run_ok(GOOD_GRAPHS[name](session))
    session.seen.append((f"{name} (succeeds)", "-", "runs"))


def test_a_megabyte_prompt_encodes_while_the_server_answers_and_cancel_stops_it(session):
    """1 MB prompts of the slowest shape for the cleaner: the encode finishes; while it runs GET /queue keeps
    answering (its answers list the running prompt); POST /interrupt during the encode stops it in the text
    node, with nothing saved; the next prompt runs."""
    megabyte = (HOSTILE_PROMPT_UNIT * (2 ** 20 // len(HOSTILE_PROMPT_UNIT) + 1))[:2 ** 20]
    graph = {**text_nodes(prompt=megabyte, negative=megabyte[::-1], use_template=True), "show": show(["text", 0])}
    prompt_id = session.submit(graph)
    answered_while_running = 0
    while (entry := session.server.history(prompt_id)) is None or entry["status"].get("completed") is None:
        if session.server.is_running(prompt_id):
            answered_while_running += 1
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert answered_while_running >= 3, "the server did not answer GET /queue while the prompt was encoded"
    # Cancel while the text node runs.
    before = bad_inputs.listing(session.output)
    session.events.drain()
    prompt_id = session.submit({**graph, "text": {**graph["text"], "inputs": {**graph["text"]["inputs"],
                                                                               "prompt": megabyte + " again"}}})
    session.events.wait_for(lambda e: e.get("type") == "executing" and e["data"].get("prompt_id") == prompt_id
                            and e["data"].get("node") == "text", timeout=120)
    session.server.interrupt()
    entry = session.server.wait(prompt_id, timeout=120)
    messages = dict(entry["status"]["messages"])
    assert "execution_interrupted" in messages and messages["execution_interrupted"]["node_id"] == "text", messages
    assert bad_inputs.listing(session.output) == before
    session.seen.append(("1 MB prompt (encodes; Cancel stops it in the text node)", "execution_interrupted",
                         f"{answered_while_running} GET /queue answers while it was encoded"))
    session.run_ok(t2v())


ALPHA = {"rgba": load_image("alpha.png"),
         "image": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["rgba", 0], "alpha": ["rgba", 1]}}}


@pytest.mark.parametrize("image", [ALPHA, {"image": load_image("pixel.png")}], ids=["alpha channel", "one pixel"])
def test_unusual_first_frames_run(session, image):
    session.run_ok(ti2v(image=image))
    session.seen.append((f"TI2V first frame with {'an alpha channel' if 'rgba' in image else 'one pixel'} (succeeds)",
                         "-", "runs"))


# ---------------------------------------------------------------------------------------------
# Cancel

def cancel_when_working(session: Session, graph: dict, node: str) -> dict:
    """Queue the graph, press Cancel once `node` has reported progress (it is really working), and return
    the prompt's /history entry."""
    session.events.drain()
    prompt_id = session.submit(graph)
    session.events.wait_for(lambda e: e.get("type") == "progress" and e["data"].get("prompt_id") == prompt_id
                            and e["data"].get("node") == node and e["data"]["value"] >= 1, timeout=120)
    assert session.server.is_running(prompt_id)
    session.server.interrupt()
    entry = session.server.wait(prompt_id, timeout=120)
    assert not session.server.is_running(prompt_id)
    return entry


def cancel_while(session: Session, graph: dict, node: str, node_type: str, reference: dict):
    before = bad_inputs.listing(session.output)
    entry = cancel_when_working(session, graph, node)
    messages = dict(entry["status"]["messages"])
    assert "execution_interrupted" in messages and "execution_error" not in messages, entry["status"]
    assert messages["execution_interrupted"]["node_id"] == node
    assert messages["execution_interrupted"]["node_type"] == node_type
    assert bad_inputs.listing(session.output) == before, "an interrupted prompt left files in the output folder"
    assert entry.get("outputs", {}) == {}
    session.seen.append((f"Cancel during {node_type}", "execution_interrupted",
                         f"interrupted in node {node} ({node_type}); no output files"))
    # The next prompt runs, and gives exactly what an uninterrupted run gave.
    again = saved_outputs(session, session.run_ok(reference_graph(tag="after_cancel")))
    assert again["latent"].equal(reference["latent"])
    assert np.array_equal(again["frames"], reference["frames"])


def test_cancel_during_sampling(session, reference):
    cancel_while(session, reference_graph(steps=1000, tag="cancel_sampling"), "sample", "AllegroVideo_Sampler", reference)


def test_cancel_during_vae_decode(session, reference):
    # 16 frames of 128x128 in 4-frame, 64-px tiles: 4 x 3 x 3 tiles, a progress report after each.
    tiles = {"tile_frames": 4, "tile_size": 64, "overlap_frames": 0, "overlap_height": 32, "overlap_width": 32}
    # Only the frames are saved: a latent saved before the decode started would be a finished output.
    graph = reference_graph(frames=16, size=128, tiles=tiles, tag="cancel_decode", save_latent=False)
    cancel_while(session, graph, "decode", "AllegroVideo_VAEDecode", reference)


# ---------------------------------------------------------------------------------------------
# After bad inputs

# One of each kind: refused by /prompt, a bad file and a pickle at load, a mix-up and a size in the run, a wrong latent.
REPRESENTATIVE_CASES = ["model file that is not there", "truncated safetensors", "pickle renamed .safetensors",
                        "TI2V conditioning into the T2V model", "size that cannot fit in memory",
                        "core image latent into the decode"]


def test_a_good_prompt_after_bad_inputs_and_a_cancel(session, reference):
    """Whatever ran before: after refused graphs, failed runs and a cancelled one, the same server still makes
    exactly the reference video."""
    cases = {case.id: case for case in CASES}
    for case in (cases[name] for name in REPRESENTATIVE_CASES):
        answer = session.post(case.bad(session))
        if case.validation:
            assert answer["http_status"] == 400, case.id
        else:
            assert answer["http_status"] == 200, case.id
            assert session.server.wait(answer["prompt_id"], timeout=300)["status"]["status_str"] == "error", case.id
    entry = cancel_when_working(session, reference_graph(steps=1000, tag="cancel_then_good"), "sample")
    assert "execution_interrupted" in dict(entry["status"]["messages"])
    outputs = saved_outputs(session, session.run_ok(reference_graph(tag="final")))
    assert outputs["frames"].shape == (FRAMES, SIZE, SIZE, 3)
    assert outputs["frames"].std() > 1                     # a picture, not a constant
    assert outputs["latent"].equal(reference["latent"])
    assert np.array_equal(outputs["frames"], reference["frames"])
    assert not session.marker.exists()
