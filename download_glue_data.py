"""Download the GLUE tasks into DIR/<Task>/ (train.tsv, dev.tsv, test.tsv; MNLI dev_matched.tsv, ...).

    python download_glue_data.py                  # as published: every task into ./glue_data
    python download_glue_data.py --data_dir glue_data --tasks all
    python download_glue_data.py --data_dir glue_data --tasks MRPC --path_to_mrpc msr_corpus/
    python download_glue_data.py --data_dir glue_data --tasks CoLA,SST --mirror /data/glue_archives

Logic: spikingbert/data/glue/download.py.
"""
import argparse
import logging
from typing import List

from spikingbert.cli.edge import ArgumentParser, HelpFormatter, run_cli, short_metavars


def build_parser() -> argparse.ArgumentParser:
    from spikingbert.data.glue.download import TASKS  # here: run_cli handles signals from the start

    parser = ArgumentParser(prog="python download_glue_data.py", description=__doc__.split("\n\nLogic")[0],
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


def main(argv: List[str]) -> None:
    from spikingbert.data.glue.download import DownloadConfig, download_glue, parse_tasks

    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    config = DownloadConfig(retries=args.retries, retry_wait=args.retry_wait)
    installed = download_glue(args.data_dir, parse_tasks(args.tasks), args.path_to_mrpc or None, args.mirror,
                              config)
    logging.getLogger(__name__).info("done: %d task(s) installed in %s", len(installed), args.data_dir)


if __name__ == "__main__":
    run_cli(main)
