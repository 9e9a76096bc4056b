"""Turn a plain-text corpus into pre-generated BERT training epochs for general distillation.

Corpus: one sentence per line, a blank line between documents. Writes
epoch_{i}.json (one instance a line: tokens, segment_ids, is_random_next,
masked_lm_positions, masked_lm_labels) and epoch_{i}_metrics.json
(num_training_examples, max_seq_len) for i < --epochs_to_generate.

    python preprocess_training_data.py --train_corpus wiki.txt --bert_model bert-base-uncased/ \\
        --do_lower_case --output_dir pregenerated/ --epochs_to_generate 3 --reduce_memory

Logic: spikingbert/data/pretraining.py.
"""
from spikingbert.apps.scripts import preprocess as main  # noqa: F401  (tests run it)
from spikingbert.apps.scripts import preprocess_cli as cli
from spikingbert.apps.scripts import preprocess_parser as build_parser  # noqa: F401

if __name__ == "__main__":
    cli()
