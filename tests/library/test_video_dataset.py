"""The seed's dataset rules (allegro/video_dataset.py): list rows, size and length filters, frame
indices, the centred crop. Pure: no ComfyUI."""
import random

import pytest
import torch

from allegro import video_dataset as vd


def test_jsonl_rows_and_the_problems_of_bad_lines():
    text = "\n".join([
        '{"path": "a.mp4", "num_frames": 24, "height": 64, "width": 64, "cap": "a boat"}',
        '{"path": "b.mp4", "num_frames": 24, "height": 64',                     # malformed JSON
        '',
        '{"path": "c.mp4", "num_frames": 24, "height": 64, "width": 64}',       # no caption
        '{"path": "d.mp4", "num_frames": 1e12, "height": 64, "width": 64, "cap": "x"}',
        '{"path": "e.mp4", "num_frames": "24", "height": 64, "width": 64, "cap": "x"}',
        '[1, 2]',
        '{"path": "f.mp4", "num_frames": 24.0, "height": 64, "width": 0, "cap": "x"}',
    ])
    rows, problems = vd.parse_jsonl(text)
    assert rows == [vd.Row(1, "a.mp4", 24, 64, 64, "a boat")]
    found = {problem.line: str(problem) for problem in problems}
    assert sorted(found) == [2, 4, 5, 6, 7, 8]
    assert "not valid JSON" in found[2]
    assert found[4].startswith("row 4 (c.mp4)") and "lacks cap" in found[4]
    assert "from 1 to" in found[5] and "whole number" in found[6] and "JSON object" in found[7]
    assert "row 8 (f.mp4)" in found[8] and '"width" is 0' in found[8]


def test_parquet_records_and_the_problems_of_bad_values():
    """Records as pyarrow's to_pylist gives them, including what pandas (the seed's converter) writes for a
    number a row lacked (NaN) and kinds JSON has no text for (bytes, dates)."""
    import datetime
    good = {"path": "a.mp4", "num_frames": 24, "height": 64, "width": 64, "cap": "a boat"}
    records = [good, {**good, "path": "b.mp4", "num_frames": float("nan")}, {**good, "path": "c.mp4", "height": 64.5},
               {**good, "path": "d.mp4", "width": float("inf")}, {**good, "path": "e.mp4", "num_frames": b"24"},
               {**good, "path": "f.mp4", "height": datetime.date(2024, 1, 1)}, {**good, "path": b"g.mp4"},
               {**good, "path": "h.mp4", "cap": None}, {**good, "path": "i.mp4", "width": 24.0}]
    rows, problems = vd.parse_records(records)
    assert rows == [vd.Row(1, "a.mp4", 24, 64, 64, "a boat"), vd.Row(9, "i.mp4", 24, 64, 24, "a boat")]
    found = {problem.line: str(problem) for problem in problems}
    assert found[2] == "row 2 (b.mp4): lacks num_frames"
    assert found[3] == 'row 3 (c.mp4): "height" must be a whole number, got 64.5'
    assert found[4] == 'row 4 (d.mp4): "width" must be a whole number, got Infinity'
    assert found[5] == 'row 5 (e.mp4): "num_frames" must be a whole number, got "b\'24\'"'
    assert found[6] == 'row 6 (f.mp4): "height" must be a whole number, got "2024-01-01"'
    assert found[7] == 'row 7: "path" must be a non-empty text'
    assert found[8] == "row 8 (h.mp4): lacks cap"
    assert vd.missing_columns(["path", "cap", "height", "extra"]) == ["num_frames", "width"]


def test_size_filter_matches_the_seeds_rule():
    # target 720x1280, hw_thr 1, aspect factor 1.5
    assert vd.keeps_size(720, 1280, 720, 1280, 1.0, 1.5)
    assert not vd.keeps_size(719, 1280, 720, 1280, 1.0, 1.5)            # a side under max * hw_thr
    assert vd.keeps_size(360, 640, 720, 1280, 0.5, 1.5)
    assert vd.keeps_size(1280, 1536, 720, 1280, 1.0, 1.5)              # aspect 0.833 <= 0.5625 * 1.5
    assert not vd.keeps_size(1280, 1280, 720, 1280, 1.0, 1.5)          # aspect 1 > 0.84375


def test_length_rule_and_frame_indices():
    assert vd.needed_frames(88, 2) == 175
    assert vd.long_enough(175, 88, 2) and not vd.long_enough(174, 88, 2)
    rng = random.Random(0)
    for total in range(7, 40):
        indices = vd.frame_indices(total, 4, 2, rng)
        if total < vd.needed_frames(4, 2):
            assert indices is None
        else:
            assert len(indices) == 4 and indices[0] % 2 == 0 and indices[-1] < total
            assert all(b - a == 2 for a, b in zip(indices, indices[1:]))
    # every start is reachable: 24 frames, 8 every 2 → strided 0..22 (12), starts 0..4 (as frames 0..8)
    starts = {vd.frame_indices(24, 8, 2, random.Random(seed))[0] for seed in range(200)}
    assert starts == {0, 2, 4, 6, 8}


@pytest.mark.parametrize("size, target, box", [
    ((720, 1280), (720, 1280), (0, 0, 720, 1280)),
    ((1080, 1080), (720, 1280), (236, 0, 607, 1080)),       # taller than 9:16: full width, centred rows
    ((100, 400), (720, 1280), (0, 112, 100, 177)),          # wider: full height; 111.5 rounds to even
])
def test_crop_box(size, target, box):
    assert vd.crop_box(*size, *target) == box


def test_crop_and_resize_gives_the_target_size_in_0_1():
    frames = torch.randint(0, 256, (3, 50, 90, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = vd.crop_and_resize(frames, 32, 48)
    assert out.shape == (3, 32, 48, 3) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    flat = vd.crop_and_resize(torch.full((2, 40, 40, 3), 51, dtype=torch.uint8), 16, 32)
    assert torch.allclose(flat, torch.full_like(flat, 0.2), atol=1e-6)
