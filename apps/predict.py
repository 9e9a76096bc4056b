"""Classify texts with a trained spiking student: label names, class probabilities, simulation steps.

    python -m apps.predict --model runs/demo/pred --text "a gorgeous, witty film" --text "ugly and pointless"
    python -m apps.predict --model runs/mrpc/pred --input pairs.tsv --output predictions.jsonl

Inputs come from ``--text`` (with ``--text_pair`` for a sentence-pair task) or from ``--input``: a TSV file
(one text a line, or two tab-separated columns for pairs), a JSONL file (objects with ``text`` and, for
pairs, ``text_pair``), or ``-`` for standard input (JSONL when its first line starts with ``{``, else TSV).
The student directory's own ``vocab.txt``, ``do_lower_case``, ``max_seq_length`` and label names are used
(directories written by earlier versions are read as every command reads them, `spikingbert.run.model_dirs`).
Each input gets one line
on standard output; ``--output`` also writes one JSON record per input. The Python API is
``SpikingBertForSequenceClassification.from_pretrained(DIR).predict(texts)``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from core.errors import DataError, UsageError
from core.files import atomic_open
from models.configuration import SpikingBertConfig
from models.inference import Prediction
from models.spiking_bert import SpikingBertForSequenceClassification
from models.stopping import StopRule
from spikingbert.cli.edge import ArgumentParser, HelpFormatter, run_cli, short_metavars
from spikingbert.cli.flags import add_adaptive_flags
from spikingbert.run.model_dirs import read_model_dir

logger = logging.getLogger("apps.predict")

Inputs = Tuple[List[str], Optional[List[str]]]


def predict_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m apps.predict", description=__doc__.split("\n\n")[0],
                            formatter_class=HelpFormatter, epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    model = parser.add_argument_group("model")
    model.add_argument("--model", type=Path, required=True, metavar="DIR",
                       help="a trained classification student: the output dir of a prediction-KD run (--pred_distill)")
    model.add_argument("--label_names", type=str, default=None, metavar="NAMES",
                       help="comma list of the class names in index order, e.g. rotten,fresh. Default: the names "
                            "the directory records (LABEL_0, LABEL_1, ... where it records none)")
    data = parser.add_argument_group("data")
    data.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text to classify (repeatable)")
    data.add_argument("--text_pair", action="append", default=None, metavar="TEXT",
                      help="second text of a sentence-pair task, one per --text, in order (repeatable). Default: none")
    data.add_argument("--input", type=str, default=None, metavar="FILE",
                      help="texts to classify: FILE.tsv, FILE.jsonl, or - for standard input. Default: none")
    spiking = parser.add_argument_group("spiking")
    spiking.add_argument("--t_conv", type=int, default=None,
                         help="simulation steps T. Default: the student's config.json")
    add_adaptive_flags(spiking, evaluation=False)
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--batch_size", type=int, default=32, help="inputs per batch")
    evaluation.add_argument("--no_cuda", action="store_true", help="run on the CPU even when a GPU is available")
    output = parser.add_argument_group("output")
    output.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="also write one JSON record per input (text, label, score, steps, probabilities) "
                             "to FILE. Default: standard output only")
    output.add_argument("--debug", action="store_true", help="show tracebacks")
    short_metavars(parser)
    return parser


def parse_predict_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    args = predict_parser().parse_args(argv)
    if not args.text and args.input is None:
        raise UsageError("nothing to classify: give --text TEXT (repeatable) or --input FILE")
    if args.text and args.input is not None:
        raise UsageError("give either --text or --input, not both")
    if args.text_pair is not None and len(args.text_pair) != len(args.text):
        raise UsageError(f"{len(args.text)} --text but {len(args.text_pair)} --text_pair: give one pair per text")
    for flag, texts in (("--text", args.text), ("--text_pair", args.text_pair or [])):
        if any(not t.strip() for t in texts):
            raise UsageError(f"{flag} is empty: give the text to classify")
    return args


def read_inputs(source: str) -> Inputs:
    """Texts (and text pairs) of a TSV or JSONL file, or of standard input (``-``)."""
    if source == "-":
        lines, name = sys.stdin.read().splitlines(), "standard input"
        jsonl = next((line for line in lines if line.strip()), "").lstrip().startswith("{")
    else:
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"--input {source}: no such file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"{source} is not UTF-8 text ({err}); save it as UTF-8") from err
        name, jsonl = source, path.suffix.lower() in (".jsonl", ".json")
    rows = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise DataError(f"{name} holds no texts")
    pairs = [(_jsonl_row if jsonl else _tsv_row)(name, n, line) for n, line in rows]
    if len({b is None for _, b in pairs}) > 1:
        raise DataError(f"{name}: some rows have a text pair and others not; give every row one, or none")
    return [a for a, _ in pairs], None if pairs[0][1] is None else [b for _, b in pairs]


def _tsv_row(name: str, n: int, line: str) -> Tuple[str, Optional[str]]:
    columns = line.split("\t")
    if len(columns) > 2 or any(not c.strip() for c in columns):
        raise DataError(f"{name} line {n}: expected a text, or a text and its pair separated by one tab "
                        f"(got {len(columns)} column(s){', an empty one' if len(columns) <= 2 else ''}); fix the row")
    return columns[0], columns[1] if len(columns) == 2 else None


def _jsonl_row(name: str, n: int, line: str) -> Tuple[str, Optional[str]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{name} line {n}: not JSON ({err.msg}); fix the row") from err
    if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
        raise DataError(f"{name} line {n}: expected an object with a non-empty \"text\" (and \"text_pair\" for "
                        "sentence pairs); fix the row")
    pair = record.get("text_pair")
    if pair is not None and (not isinstance(pair, str) or not pair.strip()):
        raise DataError(f"{name} line {n}: \"text_pair\" must be a non-empty string; fix the row")
    return record["text"], pair


def load_student(args: argparse.Namespace) -> SpikingBertForSequenceClassification:
    """The student of ``--model`` on its device, its config completed for directories written before the
    stages recorded their settings (`spikingbert.run.migrations`), and ``--label_names`` applied."""
    if not args.model.is_dir():
        raise UsageError(f"--model {args.model}: no such directory")
    model = read_model_dir(args.model, "--model", SpikingBertConfig).load(SpikingBertForSequenceClassification)
    if args.label_names is not None:
        names = [n.strip() for n in args.label_names.split(",")]
        if len(names) != model.config.num_labels or not all(names) or len(set(names)) != len(names):
            raise UsageError(f"--label_names must give {model.config.num_labels} distinct names (got "
                             f"{args.label_names!r})")
        model.config.id2label = {str(i): n for i, n in enumerate(names)}
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    return model.to(device)


def format_prediction(p: Prediction) -> str:
    """One console line: label (or score), probabilities, steps, the input."""
    text = p.text if p.text_pair is None else f"{p.text} ||| {p.text_pair}"
    if p.label is None:
        return f"score {p.score:.4f}  steps {p.steps}  {text}"
    probs = "  ".join(f"{name} {value:.3f}" for name, value in p.probabilities.items())
    return f"{p.label:<10} ({probs})  steps {p.steps}  {text}"


def write_predictions(path: Path, predictions: Iterable[Prediction]) -> None:
    with atomic_open(path) as handle:
        for p in predictions:
            handle.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_predict_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    texts, pairs = (args.text, args.text_pair) if args.input is None else read_inputs(args.input)
    model = load_student(args)
    try:
        adaptive = None if args.adaptive_t is None else StopRule(args.adaptive_t, args.adaptive_window,
                                                                 args.adaptive_min_steps)
        predictions = model.predict(texts, pairs, batch_size=args.batch_size, t_conv=args.t_conv, adaptive=adaptive)
    except ValueError as err:
        raise DataError(f"{args.input or '--text'}: {err}") from err
    for p in predictions:
        print(format_prediction(p))
    if args.output is not None:
        write_predictions(args.output, predictions)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
