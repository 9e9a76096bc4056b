"""Classify texts with a trained spiking student: label names, class probabilities, simulation steps.

    python -m apps.predict --model runs/demo/pred --text "a gorgeous, witty film" --text "ugly and pointless"
    python -m apps.predict --model runs/mrpc/pred --input pairs.tsv --output predictions.jsonl
    python -m apps.predict --model org/spikingbert-sst2 --text "a gorgeous, witty film"    # a Hugging Face Hub name

Inputs come from ``--text`` (with ``--text_pair`` for a sentence-pair task) or from ``--input``: a file or ``-``
(standard input), read as JSONL (objects with ``text`` and ``text_pair``), a GLUE TSV (by its header: ``sentence``,
``sentence1``/``sentence2``, ...) or a plain TSV (a text, or a text TAB its pair) as its first line says. The
student directory's own ``vocab.txt``, ``do_lower_case``, ``max_seq_length`` and label names are used
(directories written by earlier versions are read as every command reads them, `spikingbert.run.model_dirs`).
Each input gets one line on standard output, as soon as its chunk of inputs is classified (memory does not
grow with the input); ``--output`` also writes one JSON record per input: a file is replaced when all are
written, a pipe or a device (``/dev/stdout``) is written to as they come. The Python API is
``SpikingBertForSequenceClassification.from_pretrained(DIR).predict(texts)``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator, List, Optional, Sequence

from spikingbert.cli.edge import ArgumentParser, HelpFormatter, run_cli, setting_flag, short_metavars
from spikingbert.cli.flags import add_adaptive_flags
from spikingbert.core.errors import DataError, UsageError
from spikingbert.core.files import atomic_open

if TYPE_CHECKING:                     # imported in main: a Ctrl-C while torch loads is reported as any other
    from spikingbert.data.texts import TextRow
    from spikingbert.models.inference import Prediction
    from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification

logger = logging.getLogger("apps.predict")

#: Inputs classified together: their predictions are printed before the next ones are read.
CHUNK = 1024


def predict_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m apps.predict", description=__doc__.split("\n\n")[0],
                            formatter_class=HelpFormatter, epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    model = parser.add_argument_group("model")
    model.add_argument("--model", type=str, required=True, metavar="DIR",
                       help="a trained classification student: the output dir of a prediction-KD run (--pred_distill), "
                            "or its Hugging Face Hub name (org/name[@revision])")
    model.add_argument("--label_names", type=str, default=None, metavar="NAMES",
                       help="comma list of the class names in index order, e.g. rotten,fresh. Default: the names "
                            "the directory records (LABEL_0, LABEL_1, ... where it records none)")
    data = parser.add_argument_group("data")
    data.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text to classify (repeatable)")
    data.add_argument("--text_pair", action="append", default=None, metavar="TEXT",
                      help="second text of a sentence-pair task, one per --text, in order (repeatable). Default: none")
    data.add_argument("--input", type=str, default=None, metavar="FILE",
                      help="texts to classify: a JSONL or TSV file, or - for standard input. Default: none")
    spiking = parser.add_argument_group("spiking")
    setting_flag(spiking, "--t_conv", default=None, help="simulation steps T. Default: the student's config.json")
    add_adaptive_flags(spiking, evaluation=False)
    evaluation = parser.add_argument_group("evaluation")
    setting_flag(evaluation, "--batch_size", default=32, help="inputs per batch")
    evaluation.add_argument("--no_cuda", action="store_true", help="run on the CPU even when a GPU is available")
    output = parser.add_argument_group("output")
    output.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="also write one JSON record per input (text, label, score, steps, probabilities) "
                             "to FILE (a file, a pipe or a device). Default: standard output only")
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
    from spikingbert.transformer.tokenization import is_blank

    for flag, texts in (("--text", args.text), ("--text_pair", args.text_pair or [])):
        if any(is_blank(t) for t in texts):
            raise UsageError(f"{flag} is empty: give the text to classify")
    return args


def _streamed(path: Path) -> bool:
    """Whether ``path`` is a pipe or a device (written to as results come, never replaced)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:                                      # missing, or under a parent that is no directory
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def check_output(output: Optional[Path], source: Optional[str]) -> None:
    """``--output`` can be written, and is not ``--input``: checked before anything is read or classified."""
    if output is None or _streamed(output):
        return
    if source not in (None, "-") and Path(source).exists() and output.exists() and output.samefile(source):
        raise UsageError(f"--output {output} is the --input file: it would be replaced by the predictions; write them "
                         "to another file")
    if output.is_dir():
        raise UsageError(f"--output {output} is a directory: give the path of the file to write")
    parent = output.parent
    if not parent.is_dir():
        raise UsageError(f"--output {output}: {parent} is not a directory; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--output {output}: {parent} is not writable; write elsewhere")


@contextlib.contextmanager
def open_output(output: Optional[Path]) -> Iterator[Optional[IO[str]]]:
    """``--output`` for writing: a pipe or device as it is, a file through a temporary file renamed at the end."""
    if output is None:
        yield None
    elif _streamed(output):
        with open(output, "w", encoding="utf-8") as stream:
            yield stream
    else:
        with atomic_open(output) as handle:
            yield handle


def load_student(args: argparse.Namespace) -> SpikingBertForSequenceClassification:
    """The student of ``--model`` on its device, read as every command reads a student directory, with
    ``--label_names`` applied and its memory need checked for ``--batch_size``."""
    import torch

    from spikingbert.core.remote import is_remote
    from spikingbert.models.configuration import SpikingBertConfig
    from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
    from spikingbert.run.memory import check_memory, student_step_need
    from spikingbert.run.model_dirs import read_model_dir

    if not is_remote(args.model) and not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model}: no such directory, nor a Hugging Face Hub name (org/name)")
    model = read_model_dir(args.model, "--model", SpikingBertConfig).load(SpikingBertForSequenceClassification)
    config = model.config
    if args.label_names is not None:
        names = [n.strip() for n in args.label_names.split(",")]
        if len(names) != config.num_labels or not all(names) or len(set(names)) != len(names):
            raise UsageError(f"--label_names must give {config.num_labels} distinct names (got {args.label_names!r})")
        config.id2label = {str(i): n for i, n in enumerate(names)}
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    length = config.max_seq_length or min(128, config.max_position_embeddings)
    check_memory([student_step_need(config, args.batch_size, length, train=False)], device,
                 f"a batch of {args.batch_size} x {length} tokens", "lower --batch_size")
    return model.to(device)


def format_prediction(p: Prediction) -> str:
    """One console line: label (or score), probabilities, steps, the input."""
    text = p.text if p.text_pair is None else f"{p.text} ||| {p.text_pair}"
    if p.label is None:
        return f"score {p.score:.4f}  steps {p.steps}  {text}"
    probs = "  ".join(f"{name} {value:.3f}" for name, value in p.probabilities.items())
    return f"{p.label:<10} ({probs})  steps {p.steps}  {text}"


def _chunks(args: argparse.Namespace) -> Iterator[List[TextRow]]:
    """The inputs in chunks of `CHUNK` rows."""
    from spikingbert.data.texts import TextRow, read_texts

    if args.input is None:
        pairs = args.text_pair or [None] * len(args.text)
        rows = (TextRow(i, text, pair) for i, (text, pair) in enumerate(zip(args.text, pairs), 1))
    else:
        rows = read_texts(args.input)
    chunk: List[TextRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def classify(args: argparse.Namespace, model: SpikingBertForSequenceClassification, sink: Optional[IO[str]]) -> int:
    """Classify the inputs chunk by chunk; print each prediction and write its record to ``sink``."""
    from spikingbert.core.progress import progress
    from spikingbert.models.inference import check_student
    from spikingbert.models.stopping import StopRule

    adaptive = None if args.adaptive_t is None else StopRule(args.adaptive_t, args.adaptive_window,
                                                             args.adaptive_min_steps)
    done = 0
    with progress(desc="classify", unit="texts", disable=not sys.stderr.isatty()) as bar:
        for chunk in _chunks(args):
            pairs = [row.pair for row in chunk] if chunk[0].pair is not None else None
            check_student(model, pairs is not None)
            try:
                predictions = model.predict([row.text for row in chunk], pairs, batch_size=args.batch_size,
                                            t_conv=args.t_conv, adaptive=adaptive)
            except ValueError as err:
                raise DataError(f"{args.input or '--text'}: {err}") from err
            for p in predictions:
                print(format_prediction(p), flush=sink is None)
                if sink is not None:
                    sink.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
            sys.stdout.flush()
            done += len(chunk)
            bar.update(len(chunk))
    return done


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_predict_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    check_output(args.output, args.input)
    model = load_student(args)
    with open_output(args.output) as sink:
        classify(args, model, sink)
    return 0


def cli() -> None:
    """The command line (installed as the console script ``spikingbert-predict``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
