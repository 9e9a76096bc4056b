"""The installable package (pyproject.toml): one `spikingbert` namespace, the API from one name, console scripts
that work from any directory, and no generic top-level name (`models`, `modules`, ...) on the path."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers.students import REPO_ROOT, tiny_config

tomllib = pytest.importorskip("tomllib")

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
LAYOUT = ("apps", "core", "models", "modules", "transformer")


def _requirements(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {line.replace(" ", "") for line in lines if line and not line.startswith("-")}


def test_dependencies_are_requirements_txt_split_into_core_and_extras():
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    assert set(project["dependencies"]) | set(extras["report"]) | set(extras["s3"]) == \
           _requirements(REPO_ROOT / "requirements.txt")
    assert set(extras["dev"]) >= _requirements(REPO_ROOT / "requirements-dev.txt") - set(project["dependencies"])


def test_every_package_of_the_tree_is_installed_under_the_namespace():
    config = PYPROJECT["tool"]["setuptools"]
    mapping = config["package-dir"]
    assert {name: folder for name, folder in mapping.items() if folder in LAYOUT} == \
           {f"spikingbert.{folder}": folder for folder in LAYOUT}
    found = set()
    for top, folder in [("spikingbert", "spikingbert")] + [(f"spikingbert.{f}", f) for f in LAYOUT]:
        for path in (REPO_ROOT / folder).rglob("*"):
            if path.is_dir() and (any(path.glob("*.py")) or any(path.glob("*.cpp"))) and "build" not in path.parts:
                found.add(".".join([top, *path.relative_to(REPO_ROOT / folder).parts]))
        found.add(top)
    assert set(config["packages"]) == found


def _source_copy(tmp_path: Path) -> Path:
    """The files of the checkout git does not ignore (a build writes build/ and *.egg-info next to its source)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, check=True).stdout
    source = tmp_path / "source"
    for name in filter(None, files.decode().split("\0")):
        if (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    return source


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _run(argv, cwd: Path, env: dict, expect: int = 0) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout + proc.stderr


CHECK = """
import importlib.util, spikingbert
from spikingbert import SpikingBertForSequenceClassification
clf = SpikingBertForSequenceClassification.from_pretrained({student!r})
print("label", clf.predict("a b").label, "eval", not clf.training)
print("generic", [n for n in {layout!r} if importlib.util.find_spec(n)])
"""


def _check_installed(python: str, bin_dir: Path, tmp_path: Path, env: dict) -> None:
    """From a directory outside the checkout: the API, a console script end to end, no generic names."""
    student = tmp_path / "student"
    tiny_config(vocab=8, num_labels=2, id2label={"0": "no", "1": "yes"}).save_pretrained(student)
    import torch

    from spikingbert import SpikingBertForSequenceClassification
    torch.manual_seed(0)
    model = SpikingBertForSequenceClassification.from_pretrained(student)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]) + "\n")
    model.save_pretrained(student, vocab_file=vocab)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = _run([python, "-c", CHECK.format(student=str(student), layout=LAYOUT)], elsewhere, env)
    assert re.search(r"label (no|yes) eval True", out) and "generic []" in out
    out = _run([str(bin_dir / "spikingbert-predict"), "--model", str(student), "--text", "a b c"], elsewhere, env)
    assert re.search(r"^(no|yes)\b", out, re.M)
    assert "usage: spikingbert-task-distill" in _run([str(bin_dir / "spikingbert-task-distill"), "--help"], elsewhere,
                                                     env)
    assert "unrecognized arguments: --t_con" in _run([str(bin_dir / "spikingbert-predict"), "--model", str(student),
                                                      "--t_con", "3"], elsewhere, env, expect=2)


@pytest.mark.system
@pytest.mark.slow
def test_a_wheel_install_works_from_any_directory_and_adds_only_spikingbert(tmp_path):
    source, target = _source_copy(tmp_path), tmp_path / "site"
    _pip("--target", str(target), str(source), cwd=tmp_path)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "spikingbert"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    _check_installed(sys.executable, target / "bin", tmp_path, env)


@pytest.mark.system
@pytest.mark.slow
def test_an_editable_install_works_from_any_directory(tmp_path):
    """``pip install -e .`` into a fresh environment that sees this one's dependencies."""
    source, venv = _source_copy(tmp_path), tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = str(venv / "bin" / "python")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
                           "--no-build-isolation", "-e", str(source)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_installed(python, venv / "bin", tmp_path, {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
