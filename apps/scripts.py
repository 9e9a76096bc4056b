"""The four entry scripts of the published layout as functions (the scripts at the repository's top level and the
console scripts of an install both run these): general and task distillation, corpus preprocessing, the GLUE
download. Each command imports the heavy modules itself, so that `run_cli` handles a signal from the start.
"""
import argparse
import logging
from pathlib import Path
from typing import List

from spikingbert.cli.edge import ArgumentParser, HelpFormatter, run_cli, short_metavars
from spikingbert.cli.flags import accept_unused, ignored_flags
from spikingbert.core.errors import DataError, UsageError

__all__ = ["general_distill", "task_distill", "preprocess", "preprocess_parser", "download_glue", "download_parser",
           "load_tokenizer", "general_distill_cli", "task_distill_cli", "preprocess_cli", "download_glue_cli"]

PREPROCESS_DOC = """Turn a plain-text corpus into pre-generated BERT training epochs for general distillation.

Corpus: one sentence per line, a blank line between documents. Writes
epoch_{i}.json (one instance a line: tokens, segment_ids, is_random_next,
masked_lm_positions, masked_lm_labels) and epoch_{i}_metrics.json
(num_training_examples, max_seq_len) for i < --epochs_to_generate.

    python preprocess_training_data.py --train_corpus wiki.txt --bert_model bert-base-uncased/ \\
        --do_lower_case --output_dir pregenerated/ --epochs_to_generate 3 --reduce_memory"""
DOWNLOAD_DOC = """Download the GLUE tasks into DIR/<Task>/ (train.tsv, dev.tsv, test.tsv; MNLI dev_matched.tsv, ...).

    python download_glue_data.py                  # as published: every task into ./glue_data
    python download_glue_data.py --data_dir glue_data --tasks all
    python download_glue_data.py --data_dir glue_data --tasks MRPC --path_to_mrpc msr_corpus/
    python download_glue_data.py --data_dir glue_data --tasks CoLA,SST --mirror /data/glue_archives"""


def general_distill(argv: List[str]) -> int:
    """``spiking_bert_general_distill.py``: general KD from a pre-trained BERT on pregenerated data."""
    from spikingbert.cli.flags import parse_general_args
    from spikingbert.run.stages import run_general_distillation

    return run_general_distillation(parse_general_args(argv))


def task_distill(argv: List[str]) -> int:
    """``spiking_bert_task_distill.py``: task IKD, prediction KD, ``--do_eval`` and ``--do_predict``."""
    from spikingbert.cli.flags import parse_task_args
    from spikingbert.run.stages import run_task_distillation

    return run_task_distillation(parse_task_args(argv))


def preprocess_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python preprocess_training_data.py", description=PREPROCESS_DOC,
                            formatter_class=HelpFormatter)
    data, instances, output = (parser.add_argument_group(name) for name in ("data", "instances", "output"))
    p = data.add_argument
    p("--train_corpus", required=True, metavar="FILE",
      help="text file: one sentence a line, blank line between documents")
    p("--bert_model", required=True, metavar="DIR",
      help="BERT model directory holding vocab.txt, or its Hugging Face Hub name (e.g. bert-base-uncased), or a "
           "vocab.txt path or URL")
    p("--do_lower_case", action="store_true", help="lower-case the text (uncased models)")
    p("--reduce_memory", action="store_true",
      help="keep the tokenized corpus in memory-mapped files in a temporary directory")
    p = instances.add_argument
    p("--epochs_to_generate", type=int, default=3, help="number of epochs (files) to write")
    p("--max_seq_len", type=int, default=128, help="tokens per instance, [CLS] and [SEP] included")
    p("--short_seq_prob", type=float, default=0.1, help="probability of a shorter random target length")
    p("--one_seq", action="store_true", help="single-segment instances, no sentence pairs")
    p("--masked_lm_prob", type=float, default=0.0,
      help="masking probability (0: no masked-LM targets, as distillation needs none)")
    p("--max_predictions_per_seq", type=int, default=20, help="most masked tokens per instance")
    p("--do_whole_word_mask", action="store_true",
      help="mask whole words rather than single WordPieces (only with --masked_lm_prob > 0)")
    p("--seed", type=int, default=42, help="random seed (the output depends on it only)")
    p = output.add_argument
    p("--output_dir", required=True, metavar="DIR", help="directory for epoch_{i}.json and epoch_{i}_metrics.json")
    p("--num_workers", type=int, default=1, help="processes generating epochs in parallel")
    p("--debug", action="store_true", help="show tracebacks")
    accept_unused(parser, "preprocess")          # the published --data_url, accepted and ignored
    return parser


def load_tokenizer(bert_model: str, do_lower_case: bool):
    """The vendored BertTokenizer for --bert_model; a local directory it cannot use is a UsageError, a failed download
    keeps its exit status."""
    from spikingbert.core.errors import ModelError, UserError
    from spikingbert.core.remote import is_remote
    from spikingbert.transformer.tokenization import BertTokenizer

    try:
        return BertTokenizer.from_pretrained(bert_model, do_lower_case=do_lower_case)
    except UserError as err:
        if isinstance(err, ModelError) and not is_remote(bert_model):
            raise UsageError(f"--bert_model: {err}") from err
        raise err.about("--bert_model") from err


def preprocess(argv: List[str]) -> None:
    """``preprocess_training_data.py``: a plain-text corpus into pregenerated epochs."""
    args = preprocess_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for flag in ignored_flags(args):
        logging.getLogger(__name__).warning("%s is accepted as published and has no effect", flag)
    from spikingbert.core.output_dir import check_output_location
    from spikingbert.data.pretraining import PretrainingConfig, generate_pretraining_data

    config = PretrainingConfig(
        max_seq_len=args.max_seq_len,
        short_seq_prob=args.short_seq_prob,
        masked_lm_prob=args.masked_lm_prob,
        max_predictions_per_seq=args.max_predictions_per_seq,
        whole_word_mask=args.do_whole_word_mask,
        one_seq=args.one_seq,
        seed=args.seed,
    )
    config.validate()
    if not Path(args.train_corpus).is_file():
        raise DataError(f"--train_corpus {args.train_corpus} not found")    # before --output_dir is created
    check_output_location(Path(args.output_dir), "--output_dir")
    tokenizer = load_tokenizer(args.bert_model, args.do_lower_case)
    generate_pretraining_data(args.train_corpus, args.output_dir, tokenizer, config, args.epochs_to_generate,
                              reduce_memory=args.reduce_memory, num_workers=args.num_workers)


def download_parser() -> argparse.ArgumentParser:
    from spikingbert.data.glue.download import TASKS  # here: run_cli handles signals from the start

    parser = ArgumentParser(prog="python download_glue_data.py", description=DOWNLOAD_DOC,
                            formatter_class=HelpFormatter)
    parser.add_argument("--data_dir", default="glue_data", metavar="DIR",
                        help="directory to put the task directories in (created if missing)")
    parser.add_argument("--tasks", default="all",
                        help=f"'all' or a comma list of {','.join(task.name for task in TASKS)} (case-insensitive)")
    parser.add_argument("--path_to_mrpc", default="",
                        metavar="DIR", help="directory with msr_paraphrase_train.txt and msr_paraphrase_test.txt "
                                            "(default: '', download them)")
    parser.add_argument("--mirror", default=None, metavar="DIR_OR_URL",
                        help="local directory or base URL holding the archives under their standard names "
                             "(CoLA.zip, SST-2.zip, QQP-clean.zip, ..., mrpc_dev_ids.tsv). Default: the official "
                             "download locations")
    parser.add_argument("--retries", type=int, default=5, help="further tries after a failed download")
    parser.add_argument("--retry_wait", type=float, default=2.0,
                        help="seconds before the first retry, doubled after each failure")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    short_metavars(parser)
    return parser


def download_glue(argv: List[str]) -> None:
    """``download_glue_data.py``: the GLUE tasks into a directory."""
    from spikingbert.data.glue.download import DownloadConfig, download_glue, parse_tasks

    args = download_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    config = DownloadConfig(retries=args.retries, retry_wait=args.retry_wait)
    installed = download_glue(args.data_dir, parse_tasks(args.tasks), args.path_to_mrpc or None, args.mirror,
                              config)
    logging.getLogger(__name__).info("done: %d task(s) installed in %s", len(installed), args.data_dir)


def general_distill_cli() -> None:
    """The console script ``spikingbert-general-distill``."""
    run_cli(general_distill)


def task_distill_cli() -> None:
    """The console script ``spikingbert-task-distill``."""
    run_cli(task_distill)


def preprocess_cli() -> None:
    """The console script ``spikingbert-preprocess``."""
    run_cli(preprocess)


def download_glue_cli() -> None:
    """The console script ``spikingbert-download-glue``."""
    run_cli(download_glue)
