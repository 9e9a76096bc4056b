"""Turn a plain-text corpus into pre-generated BERT training epochs for general distillation.

Corpus: one sentence per line, a blank line between documents. Writes
epoch_{i}.json (one instance a line: tokens, segment_ids, is_random_next,
masked_lm_positions, masked_lm_labels) and epoch_{i}_metrics.json
(num_training_examples, max_seq_len) for i < --epochs_to_generate.

    python preprocess_training_data.py --train_corpus wiki.txt --bert_model bert-base-uncased/ \\
        --do_lower_case --output_dir pregenerated/ --epochs_to_generate 3 --reduce_memory

Logic: spikingbert/data/pretraining.py.
"""
import argparse
import logging
from pathlib import Path
from typing import List

from core.errors import DataError, UsageError
from spikingbert.cli.edge import ArgumentParser, HelpFormatter, run_cli
from spikingbert.cli.flags import accept_unused, ignored_flags


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python preprocess_training_data.py", description=__doc__.split("\n\nLogic")[0],
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
    from core.errors import ModelError, UserError
    from core.remote import is_remote
    from transformer.tokenization import BertTokenizer

    try:
        return BertTokenizer.from_pretrained(bert_model, do_lower_case=do_lower_case)
    except UserError as err:
        if isinstance(err, ModelError) and not is_remote(bert_model):
            raise UsageError(f"--bert_model: {err}") from err
        raise err.about("--bert_model") from err


def main(argv: List[str]) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for flag in ignored_flags(args):
        logging.getLogger(__name__).warning("%s is accepted as published and has no effect", flag)
    from core.output_dir import check_output_location
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


if __name__ == "__main__":
    run_cli(main)
