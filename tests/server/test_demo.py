"""`make demo` on the ComfyUI under test (scripts/test.sh runs the suite once per runtime, so this runs the
demo on each): workflows/allegro_t2v.json, converted as the front-end would, runs on a live server with
the tiny random weights and writes its video."""
from pathlib import Path

import av
import pytest

from scripts import demo

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_the_demo_writes_the_t2v_workflows_video(tmp_path, capsys):
    assert demo.main(["--tiny", "--base-dir", str(tmp_path / "demo")]) == 0, capsys.readouterr().err[-3000:]
    (video,) = [Path(line) for line in capsys.readouterr().out.splitlines() if line.endswith(".mp4")]
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert (frames, stream.height, stream.width) == tuple(demo.TINY_SIZE[k] for k in ("length", "height", "width"))
        assert float(stream.average_rate) == 15
