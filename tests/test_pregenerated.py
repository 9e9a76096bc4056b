"""PregeneratedDataset reading what the preprocessor wrote (spikingbert/pregenerated.py)."""
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from spikingbert.apps.corpora import build_bbc_corpus
from spikingbert.core.errors import DataError
from spikingbert.data.pregenerated import PregeneratedDataset, count_data_epochs
from spikingbert.data.pretraining import PretrainingConfig, generate_pretraining_data
from spikingbert.transformer.tokenization import BertTokenizer

SEQ_LEN = 64


@pytest.fixture(scope="module")
def tokenizer(bert_vocab):
    return BertTokenizer.from_pretrained(str(bert_vocab), do_lower_case=True)


@pytest.fixture(scope="module")
def vocab_ids(bert_vocab):
    with open(bert_vocab, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


@pytest.fixture(scope="module")
def pregenerated(tmp_path_factory, tokenizer) -> Path:
    """Two epochs with masking on (so lm_label_ids are exercised), from ~150 kB of BBC News."""
    corpus = build_bbc_corpus(tmp_path_factory.getbasetemp() / "bbc_corpus_150kb.txt", 150_000)
    out = tmp_path_factory.mktemp("pregenerated")
    config = PretrainingConfig(max_seq_len=SEQ_LEN, masked_lm_prob=0.15, max_predictions_per_seq=8)
    generate_pretraining_data(corpus, out, tokenizer, config, 2)
    return out


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def expected_item(line: str, vocab_ids):
    """The tensors of one instance, computed directly from its JSON line."""
    inst = json.loads(line)
    n = len(inst["tokens"])
    input_ids = [vocab_ids[t] for t in inst["tokens"]] + [0] * (SEQ_LEN - n)
    mask = [1] * n + [0] * (SEQ_LEN - n)
    segs = inst["segment_ids"] + [0] * (SEQ_LEN - n)
    lm = [-1] * SEQ_LEN
    for pos, label in zip(inst["masked_lm_positions"], inst["masked_lm_labels"]):
        lm[pos] = vocab_ids[label]
    return input_ids, mask, segs, lm, int(inst["is_random_next"])


def test_reads_preprocessor_output_in_both_modes(pregenerated, tokenizer, vocab_ids):
    assert count_data_epochs(pregenerated) == 2
    lines = (pregenerated / "epoch_0.json").read_text(encoding="utf-8").splitlines()
    in_memory = PregeneratedDataset(pregenerated, 0, tokenizer, num_data_epochs=2)
    mapped = PregeneratedDataset(pregenerated, 0, tokenizer, num_data_epochs=2, reduce_memory=True)
    assert len(in_memory) == len(mapped) == len(lines) > 100
    masked_items = 0
    for i, line in enumerate(lines):
        want = expected_item(line, vocab_ids)
        for ds in (in_memory, mapped):
            got = ds[i]
            assert all(t.dtype == torch.long for t in got)
            assert [t.tolist() for t in got] == list(want)
        masked_items += any(v != -1 for v in want[3])
    assert masked_items == len(lines)
    batch = next(iter(DataLoader(mapped, batch_size=8)))
    assert [tuple(t.shape) for t in batch] == [(8, SEQ_LEN)] * 4 + [(8,)]
    mapped_dir = Path(mapped._array_dir)
    assert mapped_dir.is_dir() and not Path("cache").exists()
    mapped.close()
    assert not mapped_dir.exists()


def test_epochs_cycle(pregenerated, tokenizer):
    first = PregeneratedDataset(pregenerated, 1, tokenizer, num_data_epochs=2)
    third = PregeneratedDataset(pregenerated, 3, tokenizer, num_data_epochs=2)
    zeroth = PregeneratedDataset(pregenerated, 2, tokenizer, num_data_epochs=2)
    assert third.data_epoch == 1 and zeroth.data_epoch == 0
    assert torch.equal(torch.as_tensor(first.input_ids), torch.as_tensor(third.input_ids))
    assert len(zeroth) == json.loads((pregenerated / "epoch_0_metrics.json").read_text())["num_training_examples"]
    assert not torch.equal(torch.as_tensor(first.input_ids[:10]), torch.as_tensor(zeroth.input_ids[:10]))


def test_memory_mapped_dataset_pickles_by_reference(pregenerated, tokenizer):
    mapped = PregeneratedDataset(pregenerated, 0, tokenizer, num_data_epochs=2, reduce_memory=True)
    blob = pickle.dumps(mapped)
    assert len(blob) < 10_000  # the file names travel, not the data
    clone = pickle.loads(blob)
    for i in (0, len(mapped) - 1):
        assert all(torch.equal(a, b) for a, b in zip(mapped[i], clone[i]))
    del clone
    assert Path(mapped._array_dir).is_dir()  # the clone does not own the files


def test_metrics_validation(pregenerated, tokenizer, tmp_path):
    data = copy_data(pregenerated, tmp_path / "data")
    metrics_path = data / "epoch_0_metrics.json"
    metrics = json.loads(metrics_path.read_text())

    metrics_path.write_text(json.dumps({**metrics, "num_training_examples": metrics["num_training_examples"] + 1}))
    with pytest.raises(DataError, match=r"holds \d+ instances but its metrics file records"):
        PregeneratedDataset(data, 0, tokenizer, 2)

    metrics_path.write_text(json.dumps({**metrics, "num_training_examples": 5}))
    with pytest.raises(DataError, match=r"epoch_0.json:6: more instances than the 5"):
        PregeneratedDataset(data, 0, tokenizer, 2, reduce_memory=True)

    longest = max(len(json.loads(line)["tokens"]) for line in (data / "epoch_0.json").open())
    metrics_path.write_text(json.dumps({**metrics, "max_seq_len": longest - 1}))
    with pytest.raises(DataError, match=rf"epoch_0.json:\d+: {longest} tokens exceed max_seq_len {longest - 1}"):
        PregeneratedDataset(data, 0, tokenizer, 2)

    metrics_path.write_text("{}")
    with pytest.raises(DataError, match="not a valid metrics file"):
        PregeneratedDataset(data, 0, tokenizer, 2)

    metrics_path.unlink()
    with pytest.raises(DataError, match="epoch_0_metrics.json not found"):
        PregeneratedDataset(data, 0, tokenizer, 2)
    with pytest.raises(DataError, match="has no epoch_0_metrics.json"):
        count_data_epochs(data)


def test_foreign_vocabulary_detected(pregenerated, tokenizer, tmp_path):
    data = copy_data(pregenerated, tmp_path / "data")
    lines = (data / "epoch_1.json").read_text().splitlines()
    inst = json.loads(lines[2])
    inst["tokens"][1] = "notatoken"
    lines[2] = json.dumps(inst)
    (data / "epoch_1.json").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"epoch_1.json:3: token 'notatoken' is not in the vocabulary"):
        PregeneratedDataset(data, 1, tokenizer, 2)


def test_count_data_epochs(pregenerated, tmp_path):
    with pytest.raises(DataError, match="not found"):
        count_data_epochs(tmp_path / "missing")
    with pytest.raises(DataError, match="no epoch_0.json"):
        count_data_epochs(tmp_path)
    data = copy_data(pregenerated, tmp_path / "data")
    (data / "epoch_1.json").unlink()
    (data / "epoch_1_metrics.json").unlink()
    assert count_data_epochs(data) == 1
