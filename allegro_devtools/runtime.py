"""Where the test ComfyUI lives, and the base directory (models, input, output) a test run uses."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR_NAME = "ComfyUI-Allegro"

# The sub-folders of models/ the package reads from (ComfyUI's names).
MODEL_FOLDERS = ("diffusion_models", "vae", "text_encoders", "diffusers", "checkpoints", "upscale_models")


def comfyui_dir() -> Path:
    """The ComfyUI checkout the tests run: $COMFYUI_PATH, else the one scripts/setup.sh unpacked."""
    path = Path(os.environ.get("COMFYUI_PATH") or REPO_ROOT / ".comfyui" / "ComfyUI")
    if not (path / "main.py").is_file():
        raise RuntimeError(
            f"No ComfyUI at {path}. Run `bash scripts/setup.sh` (or `make test`), "
            "or set COMFYUI_PATH to a ComfyUI checkout."
        )
    return path


def t5_tokenizer_dir() -> Path:
    """The T5 tokenizer that ships inside ComfyUI (the one Allegro's text encoder uses)."""
    return comfyui_dir() / "comfy" / "text_encoders" / "t5_tokenizer"


def prepare_base_dir(base: Path) -> Path:
    """Lay out a ComfyUI --base-directory: this package linked into custom_nodes/, empty model folders."""
    base = Path(base)
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACKAGE_DIR_NAME
    if link.is_symlink() and link.resolve() != REPO_ROOT.resolve():
        link.unlink()          # a link to another (or a deleted) checkout of this package
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    for name in MODEL_FOLDERS:
        (base / "models" / name).mkdir(parents=True, exist_ok=True)
    for name in ("input", "output", "temp", "user"):
        (base / name).mkdir(exist_ok=True)
    return base
