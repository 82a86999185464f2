"""'Allegro Training Dataset' in the executor, on tiny videos PyAV writes here (mpeg4, 64x48): a list
with good rows and every kind of bad row (malformed JSON, a missing column, an absurd size, a path
leaving input/ (by '..' or by a link), a missing file, an undecodable file, a video with no frames, one too short for
num_frames x sample_rate, a listed size the seed's filter rejects, a caption over 512 tokens). Good rows
become clips of the asked size; bad rows are skipped and named on the node; the cache holds one
complete file per clip (no partial file) and serves the second run; a list of only bad rows is an
error naming why; the set trains with 'Allegro Train LoRA'. A .parquet list (read with pyarrow) gives the
clips of the .jsonl list with its rows; a parquet list lacking a column, with wrong-typed values or not
parquet at all is named (file, row); without pyarrow the node says how to install it."""
import json
import sys

import av
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

T2V = "diffusers/Allegro-tiny"


def write_video(path, frames: int, width: int = 64, height: int = 48):
    """An mpeg4 video of `frames` frames (a moving gradient); frames=0 writes a container with no frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        container.start_encoding()             # the header, even when no frame follows
        for index in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[..., 0] = (np.arange(width) * 4 + index * 8) % 256
            image[..., 1] = 128
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def row(path, cap="a gradient moves", num_frames=24, height=48, width=64):
    return json.dumps({"path": path, "num_frames": num_frames, "height": height, "width": width, "cap": cap})


@pytest.fixture(scope="module")
def dataset_folder(base_dir):
    folder = base_dir / "input" / "clips"
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    write_video(folder / "videos" / "good.mp4", 24)
    write_video(folder / "videos" / "good2.mp4", 20)
    write_video(folder / "videos" / "short.mp4", 5)
    write_video(folder / "videos" / "empty.mkv", 0)         # a container whose stream has no frames
    (folder / "videos" / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    (base_dir / "outside.mp4").write_bytes(b"")
    lines = [
        row("videos/good.mp4"),
        '{"path": "videos/good.mp4", "num_frames": 24,',
        json.dumps({"path": "videos/good.mp4", "num_frames": 24, "height": 48, "width": 64}),
        row("videos/good.mp4", height=10 ** 9),
        row("../../outside.mp4"),
        row("videos/missing.mp4"),
        row("videos/broken.mp4"),
        row("videos/empty.mkv"),
        row("videos/short.mp4"),                     # listed 24 frames, has 5
        row("videos/good.mp4", height=16, width=64),  # the seed's size filter drops it
        row("videos/good2.mp4", cap="a long caption " * 400, num_frames=20),
    ]
    (folder / "list.jsonl").write_text("\n".join(lines) + "\n")
    write_video(base_dir / "outside_real.mp4", 24)                 # a good video outside input/, reached by a link
    link = folder / "videos" / "link.mp4"
    if not link.is_symlink():
        link.symlink_to(base_dir / "outside_real.mp4")
    (folder / "bad.jsonl").write_text("\n".join(lines[1:9] + [row("videos/link.mp4")]) + "\n")
    return folder


def graph(list_file: str, train: bool = False) -> dict:
    nodes = {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": T2V, "dtype": "fp32"}},
        "vae": {"class_type": "AllegroVideo_VAELoader", "inputs": {"vae_name": T2V, "dtype": "fp32"}},
        "data": {"class_type": "AllegroVideo_TrainingDataset", "inputs": {
            "list_file": list_file, "clip": ["t5", 0], "vae": ["vae", 0], "num_frames": 8, "sample_rate": 2,
            "max_height": 32, "max_width": 32, "hw_thr": 0.5, "hw_aspect_thr": 1.5, "seed": 0}},
    }
    if train:
        nodes["dit"] = {"class_type": "AllegroVideo_ModelLoader", "inputs": {"model_name": T2V, "weight_dtype": "fp32"}}
        nodes["train"] = {"class_type": "AllegroVideo_TrainLoRA", "inputs": {
            "model": ["dit", 0], "training_set": ["data", 0], "steps": 2, "learning_rate": 1e-3, "rank": 2,
            "algorithm": "LoRA", "snr_gamma": 5.0, "caption_dropout": 0.0, "ti2v_masks": "seed mix",
            "gradient_checkpointing": False, "existing_lora": "[None]", "seed": 0, "lora_dtype": "fp32"}}
    return nodes


def shown_text(result) -> str:
    return "\n".join(result.ui["data"]["text"])


def test_dataset_keeps_good_rows_and_names_bad_ones(comfy, dataset_folder):
    cache = dataset_folder / ".allegro_cache"
    result = comfy.run(graph("clips/list.jsonl"), targets=["data"])
    assert result.status == "success", result.error
    clips = result.output("data")
    assert len(clips) == 2
    for clip in clips:
        assert clip["frames"].shape == (8, 32, 32, 3) and list(clip["latent"].shape[:3]) == [1, 4, 2]
        states, mask = clip["caption"]
        assert states.shape[:2] == mask.shape == (1, 512)
    text = shown_text(result)
    assert "2 clips from 11 rows (0 from the cache)" in text
    assert "1 by size" in text and "Skipped 8 bad rows" in text
    assert "1 captions were longer than T5's 512 tokens" in text
    for needle in ("row 2: is not valid JSON", "row 3 (videos/good.mp4): lacks cap", "row 4 (videos/good.mp4)"):
        assert needle in text, needle
    assert len(list(cache.glob("*.safetensors"))) == 2 and not list(cache.glob(".*partial"))

    again = comfy.run(graph("clips/list.jsonl"), targets=["data"])
    assert again.status == "success", again.error
    assert "(2 from the cache)" in shown_text(again)
    for first, second in zip(clips, again.output("data")):
        assert (first["latent"] == second["latent"]).all() and (first["frames"] == second["frames"]).all()


def test_every_bad_row_kind_is_named(comfy, dataset_folder):
    result = comfy.run(graph("clips/bad.jsonl"), targets=["data"])
    assert result.status == "error"
    message = result.error["exception_message"]
    assert "No usable clip in clips/bad.jsonl" in message
    expected = {"row 4 (../../outside.mp4)": "inside ComfyUI's input/", "row 5 (videos/missing.mp4)": "missing",
                "row 6 (videos/broken.mp4)": "cannot be", "row 7 (videos/empty.mkv)": "cannot be opened",
                "row 8 (videos/short.mp4)": "has 5 frames", "row 9 (videos/link.mp4)": "inside ComfyUI's input/"}
    logged = message
    for where, why in expected.items():
        assert any(where in line and why in line for line in logged.splitlines()), (where, why)


def test_dataset_trains(comfy, dataset_folder):
    result = comfy.run(graph("clips/list.jsonl", train=True), targets=["train"])
    assert result.status == "success", result.error
    assert len(result.output("train", 2)["loss"]) == 2


def test_the_training_workflow_runs_on_the_tiny_weights(comfy, base_dir):
    """workflows/allegro_train_lora.json as the front-end queues it (tiny_prompt): dataset → train (2 steps) →
    Save LoRA Weights + Plot Loss Graph, and the trained MODEL samples a video."""
    from allegro_devtools.workflow_api import workflow_to_prompt
    from allegro_devtools.workflow_check import WORKFLOW_DIR, load_workflow, tiny_prompt, write_tiny_training_list
    write_tiny_training_list(base_dir / "input")
    before = set((base_dir / "output").rglob("*.safetensors"))
    workflow = load_workflow(WORKFLOW_DIR / "allegro_train_lora.json")
    result = comfy.run(tiny_prompt(workflow_to_prompt(workflow, comfy.object_info()), "unused.png"))
    assert result.status == "success", result.error
    ids = {node["type"]: str(node["id"]) for node in workflow["nodes"]}
    assert len(result.output(ids["AllegroVideo_TrainLoRA"], 2)["loss"]) == 2
    assert "1 clips from 1 rows" in "\n".join(result.ui[ids["AllegroVideo_TrainingDataset"]]["text"])
    assert len(set((base_dir / "output").rglob("*.safetensors")) - before) == 1      # the LoRA
    assert ids["LossGraphNode"] in result.ui and ids["SaveVideo"] in result.ui



def test_a_failed_cache_write_leaves_no_file_and_the_clip_is_still_used(comfy, dataset_folder, monkeypatch):
    import sys
    package = comfy.node_types["AllegroVideo_TrainingDataset"].__module__.rsplit(".", 2)[0]
    module = sys.modules[f"{package}.adapters.training_data"]

    def disk_full(tensors, path):
        with open(path, "wb") as partial:
            partial.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "save_file", disk_full)
    (dataset_folder / "one.jsonl").write_text(row("videos/good.mp4") + "\n")
    cache = dataset_folder / ".allegro_cache"
    before = set(cache.iterdir()) if cache.exists() else set()
    prompt = graph("clips/one.jsonl")
    prompt["data"]["inputs"]["seed"] = 7                    # a key not cached by the other tests
    result = comfy.run(prompt, targets=["data"])
    assert result.status == "success", result.error
    assert len(result.output("data")) == 1 and "(0 from the cache)" in shown_text(result)
    assert set(cache.iterdir()) - before == set()           # neither a cache file nor a partial one


def write_parquet(path, records: list, schema=None):
    import pyarrow
    import pyarrow.parquet
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(records, schema=schema), str(path))


def record(path, cap="a gradient moves", num_frames=24, height=48, width=64) -> dict:
    return {"path": path, "num_frames": num_frames, "height": height, "width": width, "cap": cap}


def test_a_parquet_list_gives_the_clips_of_its_jsonl(comfy, dataset_folder):
    """The seed converts its .jsonl list to .parquet (allegro/utils/dataset_utils.py): both give the same clips,
    skip the same rows (paths leaving input/, by '..' or by a link, included) and filter the same."""
    records = [record("videos/good.mp4"), record("../../outside.mp4"), record("videos/link.mp4"),
               record("videos/missing.mp4"), record("videos/good.mp4", height=16, width=64),
               record("videos/good2.mp4", cap="a boat", num_frames=20)]
    (dataset_folder / "same.jsonl").write_text("\n".join(json.dumps(item) for item in records) + "\n")
    write_parquet(dataset_folder / "same.parquet", records)
    results = {kind: comfy.run(graph(f"clips/same.{kind}"), targets=["data"]) for kind in ("jsonl", "parquet")}
    for result in results.values():
        assert result.status == "success", result.error
    from_jsonl, from_parquet = results["jsonl"].output("data"), results["parquet"].output("data")
    assert len(from_parquet) == len(from_jsonl) == 2
    for ours, theirs in zip(from_parquet, from_jsonl):
        assert torch.equal(ours["latent"], theirs["latent"]) and torch.equal(ours["frames"], theirs["frames"])
        assert all(torch.equal(a, b) for a, b in zip(ours["caption"], theirs["caption"]))
    texts = {kind: shown_text(result).splitlines() for kind, result in results.items()}
    assert "clips/same.parquet: 2 clips from 6 rows" in texts["parquet"][0]
    assert texts["parquet"][1:] == texts["jsonl"][1:]
    for where, why in {"row 2 (../../outside.mp4)": "inside ComfyUI's input/",
                       "row 3 (videos/link.mp4)": "inside ComfyUI's input/", "row 4 (videos/missing.mp4)": "missing"}.items():
        assert any(where in line and why in line for line in texts["parquet"]), (where, why)
    assert "1 by size" in "\n".join(texts["parquet"])


def test_bad_parquet_lists_name_the_file_and_the_row(comfy, dataset_folder, base_dir):
    import pyarrow

    def error_of(name):
        result = comfy.run(graph(f"clips/{name}"), targets=["data"])
        assert result.status == "error", name
        return result.error["exception_message"]

    # A column missing from the table: named with the file, before any row is read.
    write_parquet(dataset_folder / "nocap.parquet", [{key: value for key, value in record("videos/good.mp4").items()
                                                      if key != "cap"}])
    message = error_of("nocap.parquet")
    assert "clips/nocap.parquet has no column cap" in message and "it has path, num_frames, height, width" in message
    # Wrong types in every row: each row named, with its value.
    write_parquet(dataset_folder / "types.parquet", [record("videos/good.mp4", num_frames="24"),
                                                     record("videos/good.mp4", num_frames="many")])
    message = error_of("types.parquet")
    assert "No usable clip in clips/types.parquet" in message
    assert 'row 1 (videos/good.mp4): "num_frames" must be a whole number, got "24"' in message
    assert 'row 2 (videos/good.mp4): "num_frames" must be a whole number, got "many"' in message
    # Some rows bad: a null (pandas writes NaN for a number a row lacked) and a fractional size are skipped.
    schema = pyarrow.schema([("path", pyarrow.string()), ("num_frames", pyarrow.float64()),
                             ("height", pyarrow.float64()), ("width", pyarrow.int64()), ("cap", pyarrow.string())])
    write_parquet(dataset_folder / "mixed.parquet", [record("videos/good.mp4"),
                                                     record("videos/good.mp4", num_frames=float("nan")),
                                                     record("videos/good.mp4", height=47.5),
                                                     record("videos/good.mp4", width=None)], schema)
    result = comfy.run(graph("clips/mixed.parquet"), targets=["data"])
    assert result.status == "success", result.error
    assert len(result.output("data")) == 1
    text = shown_text(result)
    assert "Skipped 3 bad rows" in text and "row 2 (videos/good.mp4): lacks num_frames" in text
    assert 'row 3 (videos/good.mp4): "height" must be a whole number, got 47.5' in text
    assert "row 4 (videos/good.mp4): lacks width" in text
    # Not a parquet file at all.
    (dataset_folder / "garbage.parquet").write_bytes(b"PAR1" + bytes(64))
    message = error_of("garbage.parquet")
    assert "clips/garbage.parquet cannot be read as a .parquet table (Parquet magic bytes not found" in message
    # A list that is a link out of input/ is not read.
    write_parquet(base_dir / "outside.parquet", [record("videos/good.mp4")])
    link = dataset_folder / "outside_link.parquet"
    if not link.is_symlink():
        link.symlink_to(base_dir / "outside.parquet")
    assert "not a .jsonl or .parquet file inside ComfyUI's input/ folder" in error_of("outside_link.parquet")


def test_a_parquet_list_without_pyarrow_says_what_to_install(comfy, dataset_folder, monkeypatch):
    write_parquet(dataset_folder / "nopyarrow.parquet", [record("videos/good.mp4")])
    monkeypatch.setitem(sys.modules, "pyarrow", None)            # `import pyarrow` raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = comfy.run(graph("clips/nopyarrow.parquet"), targets=["data"])
    assert result.status == "error"
    message = result.error["exception_message"]
    assert "clips/nopyarrow.parquet is a .parquet list; reading it needs the pyarrow package" in message
    assert "python -m pip install pyarrow" in message and "write the list as .jsonl" in message
