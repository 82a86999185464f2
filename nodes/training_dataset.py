"""Allegro Training Dataset: a training set (the type 'Allegro Training Clip' makes) from a list in the
seed's format — `.jsonl` (or `.parquet`, with pyarrow installed) rows of {"path", "num_frames",
"height", "width", "cap"} — under ComfyUI's input/ folder (adapters/training_data.py reads, samples,
decodes, encodes and caches it).

Bad rows never stop the run: each is skipped with a count shown on the node and a log line naming it (its
line and path): malformed JSON, missing columns, absurd or wrong-typed sizes, paths outside input/, missing
or undecodable videos, videos with no frames or too short for num_frames x sample_rate. Rows whose
listed size or length the seed's filters reject are counted as filtered. Captions over T5's 512
tokens are cut there (as the seed's tokenizer does) and counted. A list with no usable row is an error."""
import logging

from comfy_api.v0_0_2 import io, ui

from ..allegro import video_dataset
from ..allegro.quoting import quote
from ..adapters import checks
from ..adapters.training_data import build_set, list_choices, listed_file
from ..adapters.training_set import check_clip_shape
from .training_set import CATEGORY, TRAINING_SET

SHOWN_PROBLEMS = 5                 # skipped rows named on the node (all of them go to the log)
SHOWN_IN_ERROR = 20                # named in the error when no row is usable
NODE = "Allegro Training Dataset"
MAX_FRAMES, MAX_SAMPLE_RATE, MAX_SIDE = 1024, 64, 4096
MAX_HW_THR, MAX_HW_ASPECT_THR = 4.0, 100.0
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def summary(list_name: str, clips: int, report: dict, shown: int = SHOWN_PROBLEMS) -> str:
    problems = sorted(report["problems"], key=lambda problem: problem.line)
    lines = [f"{list_name}: {clips} clips from {report['rows']} rows ({report['cached']} from the cache)."]
    if report["filtered_size"] or report["filtered_length"]:
        lines.append(f"Filtered as the seed does: {report['filtered_size']} by size (hw_thr, hw_aspect_thr), "
                     f"{report['filtered_length']} too short for num_frames x sample_rate (listed num_frames).")
    if problems:
        lines.append(f"Skipped {len(problems)} bad rows (all in the console log):")
        lines += [f"  {problem}" for problem in problems[:shown]]
    if report["cut_captions"]:
        lines.append(f"{report['cut_captions']} captions were longer than T5's 512 tokens and were cut there.")
    return "\n".join(lines)


class AllegroTrainingDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        choices = list_choices()
        return io.Schema(
            node_id="AllegroVideo_TrainingDataset",
            display_name="Allegro Training Dataset",
            category=CATEGORY,
            description="A training set for 'Allegro Train LoRA' from a list of videos in the seed's format (.jsonl, "
                        "or .parquet with pyarrow) under ComfyUI's input/ folder: clips sampled as the seed does, "
                        "VAE-encoded once and cached, captions encoded with T5. Bad rows are skipped and counted.",
            inputs=[
                io.Combo.Input("list_file", options=choices, default=choices[0] if choices else None,
                               tooltip="A .jsonl (one {\"path\", \"num_frames\", \"height\", \"width\", \"cap\"} "
                                       "object a line) or .parquet list under input/; video paths are relative to "
                                       "its folder."),
                io.Clip.Input("clip", tooltip="T5-XXL, as for 'Allegro Text Encode': encodes the captions (cleaned "
                                              "as the seed cleans them)."),
                io.Vae.Input("vae", tooltip="The Allegro VAE: encodes each clip once (then cached)."),
                io.Int.Input("num_frames", default=88, min=4, max=MAX_FRAMES, step=4,
                             tooltip="Frames per clip (the seed's 88; a multiple of 4)."),
                io.Int.Input("sample_rate", default=1, min=1, max=MAX_SAMPLE_RATE,
                             tooltip="Take every sample_rate-th frame (the seed's default 1)."),
                io.Int.Input("max_height", default=720, min=16, max=MAX_SIDE, step=16,
                             tooltip="Clip height: videos are centre-cropped to the aspect and resized."),
                io.Int.Input("max_width", default=1280, min=16, max=MAX_SIDE, step=16, tooltip="Clip width."),
                io.Float.Input("hw_thr", default=video_dataset.DEFAULT_HW_THR, min=0.0, max=MAX_HW_THR, step=0.05,
                               tooltip="Keep videos whose listed sides are at least this fraction of the clip's."),
                io.Float.Input("hw_aspect_thr", default=video_dataset.DEFAULT_HW_ASPECT_THR, min=1.0, max=MAX_HW_ASPECT_THR,
                               step=0.1, tooltip="Keep videos whose aspect is within this factor of the clip's."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED,
                             tooltip="Picks where in each video the clip starts (part of the cache key)."),
            ],
            outputs=[TRAINING_SET.Output(display_name="training_set", tooltip="To 'Allegro Train LoRA'.")],
        )

    @classmethod
    def validate_inputs(cls, list_file=None):
        if list_file is None or list_file in list_choices():
            return True
        return (f"{quote(list_file)} is not a .jsonl or .parquet file under ComfyUI's input/ folder "
                f"(found: {', '.join(list_choices()[:12]) or 'none'}).")

    @classmethod
    def execute(cls, list_file, clip, vae, num_frames, sample_rate, max_height, max_width, hw_thr, hw_aspect_thr,
                seed) -> io.NodeOutput:
        list_path = listed_file(list_file)
        if list_path is None:
            raise ValueError(f"'{NODE}' got list_file = {quote(list_file)}, which is not a .jsonl or .parquet file "
                             "inside ComfyUI's input/ folder: put the list there (videos in the same folder or below) "
                             "and pick it in 'list_file'.")
        num_frames = checks.whole_number(NODE, "num_frames", num_frames, 4, MAX_FRAMES)
        sample_rate = checks.whole_number(NODE, "sample_rate", sample_rate, 1, MAX_SAMPLE_RATE)
        max_height, max_width = (checks.whole_number(NODE, name, value, 16, MAX_SIDE)
                                 for name, value in (("max_height", max_height), ("max_width", max_width)))
        hw_thr = checks.finite_number(NODE, "hw_thr", hw_thr, 0.0, MAX_HW_THR)
        hw_aspect_thr = checks.finite_number(NODE, "hw_aspect_thr", hw_aspect_thr, 1.0, MAX_HW_ASPECT_THR)
        seed = checks.whole_number(NODE, "seed", seed, 0, MAX_SEED)
        check_clip_shape(num_frames, max_height, max_width, vae)
        settings = {"num_frames": num_frames, "sample_rate": sample_rate, "max_height": max_height,
                    "max_width": max_width, "hw_thr": hw_thr, "hw_aspect_thr": hw_aspect_thr, "seed": seed}
        training_set, report = build_set(list_path, clip, vae, settings)
        for problem in report["problems"]:
            logging.warning("Allegro Training Dataset %s: skipped %s", list_file, problem)
        text = summary(list_file, len(training_set), report)
        logging.info("Allegro Training Dataset %s", text)
        if not report["rows"]:
            raise ValueError(f"{list_file} has no rows: write one JSON object a line, each with the keys path, "
                             "num_frames, height, width and cap.")
        if not training_set:
            named = summary(list_file, 0, report, SHOWN_IN_ERROR)
            raise ValueError(f"No usable clip in {list_file}.\n{named}\nFix or remove those rows, or loosen "
                             "num_frames, sample_rate, hw_thr or hw_aspect_thr.")
        return io.NodeOutput(training_set, ui=ui.PreviewText(text))
