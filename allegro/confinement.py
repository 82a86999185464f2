"""Confinement: a read may be limited to some folders (ComfyUI's model folders), links included.

`confined_to(roots)` sets, for the reads made inside it, the folders every file and folder opened or
listed must resolve into (links followed); `confine(path)` is the check those reads make. Outside a
`confined_to` block (or with roots None) nothing is confined: the library is also used by scripts.
"""
import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Sequence

from .checkpoint_kinds import CheckpointError

# The folders (resolved) the current read may open or list anything in; None: anywhere.
_ALLOWED_ROOTS: ContextVar[tuple[Path, ...] | None] = ContextVar("allegro_allowed_roots", default=None)


@contextmanager
def confined_to(roots: Sequence[Path] | None):
    token = _ALLOWED_ROOTS.set(None if roots is None else tuple(Path(os.path.realpath(r)) for r in roots))
    try:
        yield
    finally:
        _ALLOWED_ROOTS.reset(token)


def is_inside(path, roots: Sequence[Path]) -> bool:
    """Whether `path`, every link on the way resolved, is one of `roots` (resolved) or under one."""
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in roots)


def confine(path: Path) -> None:
    roots = _ALLOWED_ROOTS.get()
    if roots is not None and not is_inside(path, roots):
        refuse_outside(path)


def refuse_outside(path: Path):
    # Named by the path the user's choice led to, never by where the link points.
    raise CheckpointError(
        f"{path} is (or goes through) a link that leads outside ComfyUI's model folders, so it is not read. "
        "Add the folder it leads to to extra_model_paths.yaml (ComfyUI's way to use models kept elsewhere), "
        "or put the file itself in the model folder instead of a link."
    )
