"""Redraw the README's workflow pictures (docs/images/<workflow>.jpg) from workflows/*.json in the real
ComfyUI front-end, with the code the browser tests use for theirs (allegro_devtools.browser.workflow_picture:
every run of tests/browser/test_browser.py draws the same pictures into test-output/browser/), so a picture shows the
shipped file as ComfyUI draws it. Run it after changing a workflow or a node's widgets:

    .venv/bin/python -m scripts.render_workflow_images [--out DIR]

It uses the ComfyUI of COMFYUI_PATH, by default the base runtime (0.3.75, front-end 1.32.9), whose front-end
draws a workflow whose model files are absent without error marks.
"""
import argparse
import tempfile
from pathlib import Path

from allegro_devtools import browser
from allegro_devtools.runtime import REPO_ROOT
from allegro_devtools.server import ComfyServer
from allegro_devtools.workflow_check import load_workflow, workflow_paths

README_IMAGES = REPO_ROOT / "docs" / "images"


def draw_workflows(page, out_dir: Path) -> list[Path]:
    """Load each shipped workflow in the page and write its picture into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = []
    for path in workflow_paths():
        browser.load_workflow(page, load_workflow(path))
        pictures.append(browser.workflow_picture(page, out_dir / f"{path.stem}.jpg"))
        pictures[-1].with_suffix(".png").unlink()
    return pictures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=README_IMAGES, help="where the .jpg files go")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as base:
        server = ComfyServer(base).start()
        try:
            with browser.front_end(server) as page:
                for picture in draw_workflows(page, args.out):
                    print(picture)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
