"""What the Comfy Registry, pip and CI read from the repository: pyproject.toml, requirements.txt,
the README's two commands and .ci/run."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from allegro_devtools.runtime import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def requirement_names(path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [re.split(r"[<>=!~\[; ]", line)[0].lower() for line in lines if line]


def test_the_registry_section_is_complete():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    # Registry names are unique: "comfyui-allegro" is the other Allegro pack's (bombax-xiaoice).
    assert project["name"] == "comfyui-allegro-video" and re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["license"] and project["urls"]["Repository"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "ComfyUI-Allegro"
    # The icon URL points at a file of this repository.
    icon = comfy["Icon"]
    assert icon.startswith("https://raw.githubusercontent.com/") and icon.endswith(".png")
    assert (REPO_ROOT / icon.split("/main/", 1)[1]).is_file()


def test_requirements_never_name_torch_and_match_the_project_dependencies():
    names = requirement_names(REPO_ROOT / "requirements.txt")
    assert not {"torch", "torchvision", "torchaudio"} & set(names)
    assert sorted(names) == sorted(re.split(r"[<>=!~\[; ]", d)[0].lower() for d in PYPROJECT["project"]["dependencies"])


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    first_block = README.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    assert README.index("make demo") < README.index("## What Allegro is")
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))] == ["make test"]


def test_every_picture_the_readme_shows_is_in_the_repository():
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert len(pictures) >= 5
    for picture in pictures:
        assert (REPO_ROOT / picture).is_file(), picture


def test_every_shipped_workflow_has_its_picture_in_the_readme():
    """scripts/render_workflow_images.py draws docs/images/<workflow>.jpg for each file in workflows/."""
    for workflow in sorted((REPO_ROOT / "workflows").glob("*.json")):
        assert f"![{workflow.stem}](docs/images/{workflow.stem}.jpg)" in README, workflow.name


def test_the_model_library_imports_without_comfyui():
    """allegro/ is pure PyTorch: every module imports in a fresh Python where `comfy` cannot be imported."""
    script = (
        "import sys, pkgutil, importlib\n"
        "for name in ('comfy', 'folder_paths', 'comfy_extras', 'nodes'):\n"
        "    sys.modules[name] = None          # any import of ComfyUI now raises ImportError\n"
        "import allegro\n"
        "names = [m.name for m in pkgutil.iter_modules(allegro.__path__, 'allegro.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 10


def relative_imports(path: Path) -> set[str]:
    """The package modules a file imports, as paths from the repository root ("adapters.model", "nodes")."""
    import ast
    package = path.parent.relative_to(REPO_ROOT).parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            module = ".".join(base + tuple((node.module or "").split(".") if node.module else ()))
            found |= {module} if node.module else {f"{module}.{alias.name}".strip(".") for alias in node.names}
    return found


def test_the_layout_keeps_its_direction():
    """allegro/ imports nothing of the package's ComfyUI side; adapters/ never imports a node module (nodes/ is
    thin over adapters/, not the other way round); every node module defines node classes (a file of nodes/
    without one would be an adapter in the wrong place)."""
    for path in sorted((REPO_ROOT / "allegro").glob("*.py")):
        wrong = {m for m in relative_imports(path) if m.split(".")[0] in ("adapters", "nodes")}
        assert not wrong, f"{path.name} imports {wrong}"
    for path in sorted((REPO_ROOT / "adapters").glob("*.py")):
        wrong = {m for m in relative_imports(path) if m.split(".")[0] == "nodes"}
        assert not wrong, f"adapters/{path.name} imports the node modules {wrong}"
    for path in sorted((REPO_ROOT / "nodes").glob("*.py")):
        if path.name != "__init__.py":
            assert "(io.ComfyNode):" in path.read_text(encoding="utf-8"), f"nodes/{path.name} defines no node class"


def test_the_layout_check_sees_a_wrong_import(tmp_path, monkeypatch):
    """The check above can fail: an adapter importing a node module is found."""
    (tmp_path / "adapters").mkdir()
    wrong = tmp_path / "adapters" / "wrong.py"
    wrong.write_text("from ..nodes.sampler import AllegroSampler\nfrom . import checks\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    assert relative_imports(wrong) == {"nodes.sampler", "adapters.checks"}
