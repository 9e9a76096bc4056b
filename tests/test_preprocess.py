"""preprocess_training_data.py on a real English corpus (spikingbert/pretraining_data.py)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

import spikingbert.data.pretraining as pretraining_data
from spikingbert.apps.corpora import build_bbc_corpus
from spikingbert.core.errors import DataError
from spikingbert.data.pretraining import PretrainingConfig, generate_pretraining_data
from spikingbert.transformer.tokenization import BertTokenizer

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "preprocess_training_data.py"
MAX_SEQ_LEN = 128


@pytest.fixture(scope="session")
def bbc_corpus(tmp_path_factory) -> Path:
    """A >= 1 MB real English corpus, built once per session."""
    return build_bbc_corpus(tmp_path_factory.getbasetemp() / "bbc_corpus_1mb.txt", 1_000_000)


@pytest.fixture(scope="session")
def tokenizer(bert_vocab):
    return BertTokenizer.from_pretrained(str(bert_vocab), do_lower_case=True)


def run_script(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, **kwargs)


def read_epoch(directory: Path, epoch: int) -> List[Dict]:
    with open(directory / f"epoch_{epoch}.json", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# The tests that use it are marked system and slow: it runs the script four times.
@pytest.fixture(scope="module")
def generated(bbc_corpus, bert_vocab, tmp_path_factory) -> Dict[str, Path]:
    """The corpus preprocessed four ways that must give the same files."""
    base = tmp_path_factory.mktemp("pregen")
    variants = {"plain": [], "reduce_memory": ["--reduce_memory"], "workers": ["--num_workers", "2"],
                "workers_reduce_memory": ["--num_workers", "2", "--reduce_memory"]}
    out = {}
    for name, extra in variants.items():
        out[name] = base / name
        result = run_script("--train_corpus", str(bbc_corpus), "--output_dir", str(out[name]),
                            "--bert_model", str(bert_vocab.parent), "--do_lower_case", "--epochs_to_generate", "2",
                            "--max_seq_len", str(MAX_SEQ_LEN), "--seed", "7", *extra)
        assert result.returncode == 0, result.stderr
    return out


@pytest.mark.system
@pytest.mark.slow
def test_outputs_identical_across_memory_modes_and_workers(generated):
    files = sorted(p.name for p in generated["plain"].iterdir())
    assert files == ["epoch_0.json", "epoch_0_metrics.json", "epoch_1.json", "epoch_1_metrics.json"]
    for name in ("reduce_memory", "workers", "workers_reduce_memory"):
        assert sorted(p.name for p in generated[name].iterdir()) == files
        for f in files:
            assert (generated[name] / f).read_bytes() == (generated["plain"] / f).read_bytes(), (name, f)
    # Epochs are drawn independently: not the same instances.
    assert (generated["plain"] / "epoch_0.json").read_bytes() != (generated["plain"] / "epoch_1.json").read_bytes()


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("epoch", [0, 1])
def test_instances_are_well_formed(generated, epoch):
    instances = read_epoch(generated["plain"], epoch)
    metrics = json.loads((generated["plain"] / f"epoch_{epoch}_metrics.json").read_text())
    assert metrics == {"num_training_examples": len(instances), "max_seq_len": MAX_SEQ_LEN}
    assert len(instances) > 2000
    for inst in instances:
        tokens, segs = inst["tokens"], inst["segment_ids"]
        assert len(tokens) <= MAX_SEQ_LEN and len(segs) == len(tokens)
        first_sep = tokens.index("[SEP]")
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2
        assert 1 < first_sep < len(tokens) - 2  # both segments non-empty
        assert segs == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)
        assert inst["masked_lm_positions"] == [] and inst["masked_lm_labels"] == []
    ratio = sum(inst["is_random_next"] for inst in instances) / len(instances)
    assert 0.45 <= ratio <= 0.55, ratio
    # Most instances fill the sequence; short_seq_prob makes some shorter.
    lengths = [len(inst["tokens"]) for inst in instances]
    assert 0.5 < sum(n == MAX_SEQ_LEN for n in lengths) / len(lengths) < 0.95


@pytest.mark.system
@pytest.mark.slow
def test_random_next_is_a_fair_coin(generated):
    """Over both epochs (~5000 instances, std ~0.007) the ratio is 0.5 within 0.03: a forced random next
    for one-sentence chunks, as in BERT's generator (~0.55 here), would fail this."""
    instances = read_epoch(generated["plain"], 0) + read_epoch(generated["plain"], 1)
    ratio = sum(inst["is_random_next"] for inst in instances) / len(instances)
    assert abs(ratio - 0.5) < 0.03, ratio


@pytest.mark.system
@pytest.mark.slow
def test_segments_come_from_the_corpus(generated, bbc_corpus, tokenizer):
    """Untruncated actual-next pairs are consecutive text of one document; random nexts join two texts."""
    documents = bbc_corpus.read_text(encoding="utf-8").split("\n\n")
    corpus_text = "\n".join(" ".join(tokenizer.tokenize(doc.replace("\n", " "))) for doc in documents)
    checked = {True: 0, False: 0}
    random_but_consecutive = 0
    for inst in read_epoch(generated["plain"], 0)[:600]:
        tokens = inst["tokens"]
        if len(tokens) == MAX_SEQ_LEN:  # possibly truncated at either end of a segment
            continue
        sep = tokens.index("[SEP]")
        a, b = " ".join(tokens[1:sep]), " ".join(tokens[sep + 1:-1])
        if inst["is_random_next"]:
            assert a in corpus_text and b in corpus_text
            random_but_consecutive += f"{a} {b}" in corpus_text  # only by chance (the corpus has duplicates)
        else:
            assert f"{a} {b}" in corpus_text
        checked[inst["is_random_next"]] += 1
    assert min(checked.values()) >= 20
    assert random_but_consecutive <= 0.1 * checked[True]


@pytest.mark.system
@pytest.mark.slow
def test_seed_changes_output(bbc_corpus, tokenizer, tmp_path, generated):
    config = PretrainingConfig(max_seq_len=MAX_SEQ_LEN, seed=7)
    counts = generate_pretraining_data(bbc_corpus, tmp_path / "same", tokenizer, config, 1)
    assert (tmp_path / "same" / "epoch_0.json").read_bytes() == (generated["plain"] / "epoch_0.json").read_bytes()
    assert counts == [len(read_epoch(generated["plain"], 0))]
    generate_pretraining_data(bbc_corpus, tmp_path / "other", tokenizer, PretrainingConfig(MAX_SEQ_LEN, seed=8), 1)
    assert (tmp_path / "other" / "epoch_0.json").read_bytes() != (generated["plain"] / "epoch_0.json").read_bytes()


def small_corpus(bbc_corpus: Path, tmp_path: Path, documents: int = 40) -> Path:
    path = tmp_path / "small.txt"
    path.write_text("\n\n".join(bbc_corpus.read_text(encoding="utf-8").split("\n\n")[:documents]) + "\n")
    return path


def test_whole_word_masking(bbc_corpus, tokenizer, tmp_path):
    config = PretrainingConfig(max_seq_len=64, masked_lm_prob=0.15, max_predictions_per_seq=10, whole_word_mask=True)
    generate_pretraining_data(small_corpus(bbc_corpus, tmp_path), tmp_path / "out", tokenizer, config, 1)
    instances = read_epoch(tmp_path / "out", 0)
    replaced = kept = 0
    for inst in instances:
        tokens, positions, labels = inst["tokens"], inst["masked_lm_positions"], inst["masked_lm_labels"]
        assert positions == sorted(set(positions)) and len(positions) == len(labels)
        assert 1 <= len(positions) <= min(10, max(1, round(len(tokens) * 0.15)))
        for pos, label in zip(positions, labels):
            assert tokens[pos] not in ("[CLS]", "[SEP]") and label not in ("[CLS]", "[SEP]")
            replaced += tokens[pos] == "[MASK]"
            kept += tokens[pos] == label
        # Whole words: the pieces of a masked word are masked together.
        masked = set(positions)
        for pos, label in zip(positions, labels):
            if label.startswith("##") and tokens[pos - 1] not in ("[CLS]", "[SEP]"):
                assert pos - 1 in masked
            if pos + 1 < len(tokens) and pos + 1 not in masked:
                assert not tokens[pos + 1].startswith("##")
    total = sum(len(inst["masked_lm_positions"]) for inst in instances)
    assert 0.72 < replaced / total < 0.88 and 0.04 < kept / total < 0.16


def test_one_seq(bbc_corpus, tokenizer, tmp_path):
    config = PretrainingConfig(max_seq_len=48, one_seq=True)
    generate_pretraining_data(small_corpus(bbc_corpus, tmp_path), tmp_path / "out", tokenizer, config, 1)
    for inst in read_epoch(tmp_path / "out", 0):
        tokens = inst["tokens"]
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 1
        assert len(tokens) <= 48 and inst["segment_ids"] == [0] * len(tokens) and not inst["is_random_next"]


def test_interrupted_epoch_leaves_no_partial_file(bbc_corpus, tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "out"
    generate_pretraining_data(small_corpus(bbc_corpus, tmp_path), out, tokenizer, PretrainingConfig(64), 3)
    calls = {"n": 0}
    real = pretraining_data.create_instances_from_document

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 60:  # in the second epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pretraining_data, "create_instances_from_document", failing)
    old_epoch_1 = (out / "epoch_1.json").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        generate_pretraining_data(small_corpus(bbc_corpus, tmp_path), out, tokenizer, PretrainingConfig(64, seed=1), 3)
    names = sorted(p.name for p in out.iterdir())
    # Epoch 0 was rewritten; epoch 1 keeps its old data but lost its metrics (never a mismatched pair).
    assert names == ["epoch_0.json", "epoch_0_metrics.json", "epoch_1.json", "epoch_2.json", "epoch_2_metrics.json"]
    assert (out / "epoch_1.json").read_bytes() == old_epoch_1


@pytest.mark.system
def test_killed_run_leaves_only_complete_epoch_files(bbc_corpus, bert_vocab, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--train_corpus", str(bbc_corpus), "--output_dir", str(out),
                             "--bert_model", str(bert_vocab), "--do_lower_case", "--epochs_to_generate", "20"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "epoch_1_metrics.json").exists():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before it wrote epoch 1"
        assert time.time() < deadline, "epoch 1 was not written within 120 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL                       # killed while generating, not finished
    assert not (out / "epoch_19_metrics.json").exists()
    assert (out / "epoch_0_metrics.json").exists()
    for data_file in out.glob("epoch_*.json"):
        if data_file.name.endswith("_metrics.json"):
            continue
        text = data_file.read_text(encoding="utf-8")
        assert text.endswith("\n")
        lines = [json.loads(line) for line in text.splitlines()]  # every line complete
        metrics = data_file.with_name(data_file.stem + "_metrics.json")
        if metrics.exists():
            assert json.loads(metrics.read_text())["num_training_examples"] == len(lines)


def test_empty_corpus(tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(DataError, match="holds no text"):
        generate_pretraining_data(empty, tmp_path / "out", tokenizer, PretrainingConfig(), 1)


def test_stale_epochs_from_earlier_run_removed(bbc_corpus, tokenizer, tmp_path):
    corpus = small_corpus(bbc_corpus, tmp_path)
    generate_pretraining_data(corpus, tmp_path / "out", tokenizer, PretrainingConfig(64), 3)
    generate_pretraining_data(corpus, tmp_path / "out", tokenizer, PretrainingConfig(64), 1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["epoch_0.json", "epoch_0_metrics.json"]


@pytest.mark.system
@pytest.mark.slow
def test_user_errors(bbc_corpus, bert_vocab, tmp_path):
    common = ["--output_dir", str(tmp_path / "out"), "--bert_model", str(bert_vocab.parent), "--do_lower_case"]
    missing = run_script("--train_corpus", str(tmp_path / "nope.txt"), *common)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == f"error: --train_corpus {tmp_path / 'nope.txt'} not found"
    one_doc = tmp_path / "one.txt"
    one_doc.write_text("A first sentence.\nA second sentence.\n")
    single = run_script("--train_corpus", str(one_doc), *common)
    assert single.returncode == 1 and "single document" in single.stderr and "Traceback" not in single.stderr
    short = run_script("--train_corpus", str(one_doc), *common, "--max_seq_len", "4")
    assert short.returncode == 2 and "error: --max_seq_len 4 is too small" in short.stderr
    bad_model = run_script("--train_corpus", str(one_doc), "--output_dir", str(tmp_path / "o"),
                           "--bert_model", str(tmp_path))
    assert bad_model.returncode == 2 and bad_model.stderr.startswith("error: --bert_model")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\u00e9 one.\n\nCaf\u00e9 two.\n".encode("latin-1"))
    bad_text = run_script("--train_corpus", str(latin1), *common)
    assert bad_text.returncode == 1 and f"error: {latin1}:1: not valid UTF-8" in bad_text.stderr
