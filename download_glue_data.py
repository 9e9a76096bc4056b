"""Download the GLUE tasks into DIR/<Task>/ (train.tsv, dev.tsv, test.tsv; MNLI dev_matched.tsv, ...).

    python download_glue_data.py                  # as published: every task into ./glue_data
    python download_glue_data.py --data_dir glue_data --tasks all
    python download_glue_data.py --data_dir glue_data --tasks MRPC --path_to_mrpc msr_corpus/
    python download_glue_data.py --data_dir glue_data --tasks CoLA,SST --mirror /data/glue_archives

Logic: spikingbert/data/glue/download.py.
"""
from spikingbert.apps.scripts import download_glue as main  # noqa: F401  (tests run it)
from spikingbert.apps.scripts import download_glue_cli as cli
from spikingbert.apps.scripts import download_parser as build_parser  # noqa: F401

if __name__ == "__main__":
    cli()
