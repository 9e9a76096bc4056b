"""GLUE readers, feature conversion, feature cache and metrics (spikingbert/glue/)."""
import math
import os
from pathlib import Path
from typing import List

import pytest
import torch

from spikingbert.core.errors import DataError, UserError
from spikingbert.data.glue import (
    DEFAULT_TASK_SETTINGS,
    InputExample,
    compute_metrics,
    convert_examples_to_features,
    features_to_dataset,
    get_processor,
    load_task_dataset,
    main_metric,
)
from spikingbert.transformer.tokenization import BertTokenizer

MNLI_TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                     "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
                   "label5\tgold_label")
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"


@pytest.fixture(scope="module")
def tokenizer(bert_vocab):
    return BertTokenizer.from_pretrained(str(bert_vocab), do_lower_case=True)


@pytest.fixture(scope="module")
def vocab_ids(bert_vocab):
    """token -> id read straight from vocab.txt (line number), independent of the tokenizer."""
    with open(bert_vocab, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


def write_tsv(path: Path, lines: List[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def mnli_row(i: int, s1: str, s2: str, label: str, dev: bool = False) -> str:
    extra = ["x"] * (5 if dev else 1)
    return "\t".join([str(i), "p", "q", "fiction", "(bp1)", "(bp2)", "(p1)", "(p2)", s1, s2, *extra, label])


def stsb_row(i: int, s1: str, s2: str, score: str) -> str:
    return "\t".join([str(i), "main-captions", "MSRvid", "2012test", "0001", "none", "none", s1, s2, score])


# --------------------------------------------------------------------------------------------------
# Metrics, checked against values computed by hand
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["SST-2", "mnli", "MNLI-MM", "qnli", "rte", "wnli"])
def test_accuracy_tasks(task):
    result = compute_metrics(task, [1, 0, 1, 1], [1, 0, 0, 1])
    assert result == {"acc": 0.75}
    assert main_metric(task) == "acc"


def test_mrpc_f1():
    # TP = 2 (0, 3), FP = 1 (1), FN = 1 (4): precision = recall = 2/3, F1 = 2/3; 4 of 6 right.
    result = compute_metrics("MRPC", [1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0])
    assert result["acc"] == pytest.approx(4 / 6)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["acc_and_f1"] == pytest.approx((4 / 6 + 2 / 3) / 2)
    assert main_metric("mrpc") == "acc"


def test_qqp_f1():
    # TP = 3, FP = 1, FN = 2: precision 3/4, recall 3/5, F1 = 2PR/(P+R) = 2/3; acc = 4/7.
    preds = [1, 1, 1, 1, 0, 0, 0]
    labels = [1, 1, 1, 0, 1, 1, 0]
    result = compute_metrics("qqp", torch.tensor(preds), torch.tensor(labels))
    assert result["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    assert result["acc"] == pytest.approx(4 / 7)
    assert result["acc_and_f1"] == pytest.approx((4 / 7 + 2 / 3) / 2)


def test_cola_mcc():
    # TP = 2, TN = 1, FP = 1, FN = 1: MCC = (2*1 - 1*1) / sqrt(3 * 3 * 2 * 2) = 1/6.
    result = compute_metrics("CoLA", [1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert result == {"mcc": pytest.approx(1 / 6)}
    assert main_metric("cola") == "mcc"


def test_stsb_correlations():
    # x = [1, 2, 3, 10] (mean 4), y = [1, 3, 2, 4] (mean 2.5): sum dx*dy = 13, sum dx^2 = 50, sum dy^2 = 5
    # -> pearson = 13 / sqrt(250); ranks of x are 1..4 -> spearman = pearson(ranks) = 4 / 5.
    result = compute_metrics("sts-b", [[1.0], [2.0], [3.0], [10.0]], [1.0, 3.0, 2.0, 4.0])
    assert result["pearson"] == pytest.approx(13 / math.sqrt(250))
    assert result["spearmanr"] == pytest.approx(0.8)
    assert result["corr"] == pytest.approx((13 / math.sqrt(250) + 0.8) / 2)
    assert main_metric("STS-B") == "corr"


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError):
        compute_metrics("sst-2", [1, 0], [1, 0, 1])


def test_task_names_case_insensitive_and_unknown():
    assert get_processor("SST-2").task_name == get_processor("sst-2").task_name == "sst-2"
    with pytest.raises(UserError) as err:
        get_processor("sst3")
    assert "sst3" in str(err.value) and "mnli-mm" in str(err.value) and "wnli" in str(err.value)
    assert err.value.exit_code == 2


def test_default_task_settings():
    expected = {"mnli": (5, 128), "mrpc": (20, 128), "sst-2": (10, 64), "sts-b": (20, 128),
                "qqp": (5, 128), "qnli": (10, 128), "rte": (20, 128), "cola": (50, 64), "wnli": (20, 128)}
    for task, (epochs, seq_len) in expected.items():
        settings = DEFAULT_TASK_SETTINGS[task]
        assert (settings.num_train_epochs, settings.max_seq_length) == (epochs, seq_len)


# --------------------------------------------------------------------------------------------------
# Readers, one per GLUE layout
# --------------------------------------------------------------------------------------------------
def test_cola_no_header(tmp_path):
    write_tsv(tmp_path / "train.tsv", ["gj04\t1\t\tOur friends won't buy this analysis.",
                                       "gj04\t0\t*\tThey drank the pub."])
    proc = get_processor("CoLA")
    examples = proc.read_split(tmp_path, "train")[0]
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("Our friends won't buy this analysis.", None, "1"), ("They drank the pub.", None, "0")]
    assert proc.get_labels() == ["0", "1"] and proc.output_mode == "classification"


def test_sst2_and_mrpc(tmp_path):
    write_tsv(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel", "it 's a charming journey .\t1"])
    ex = get_processor("sst-2").read_split(tmp_path / "SST-2", "dev")[0]
    assert [(e.text_a, e.text_b, e.label) for e in ex] == [("it 's a charming journey .", None, "1")]

    write_tsv(tmp_path / "MRPC" / "train.tsv", ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                                                "1\t702876\t702977\tAmrozi accused him .\tReferring to him ."])
    ex = get_processor("MRPC").read_split(tmp_path / "MRPC", "train")[0]
    assert [(e.text_a, e.text_b, e.label) for e in ex] == [("Amrozi accused him .", "Referring to him .", "1")]


def test_qqp_missing_fields_are_bad_rows(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "0\t1\t2\tHow do I learn?\tWhat is learning?\t0",
        "1\t3\t4\tWhy is the sky blue?\t1",            # line 3: question2 missing
        "2\t5\t6\tIs this real?\t\t1",                   # line 4: empty question2
        "3\t7\t8\tWho am I?\tWho are you?\t1",
    ])
    proc = get_processor("QQP")
    with pytest.raises(DataError) as err:
        proc.read_split(tmp_path, "train")[0]
    assert f"{path}:3:" in str(err.value) and "expected 6 tab-separated columns, found 5" in str(err.value)
    assert "`skip_bad_rows`" in str(err.value)
    examples, stats = proc.read_split(tmp_path, "train", skip_bad_rows=True)
    assert [e.text_a for e in examples] == ["How do I learn?", "Who am I?"]
    assert stats.num_bad_rows == 2 and stats.num_examples == 2
    assert stats.bad_row_messages[1].startswith(f"{path}:4: empty")


def test_stsb_float_scores(tmp_path, tokenizer):
    write_tsv(tmp_path / "train.tsv", [STSB_HEADER,
                                       stsb_row(0, "A plane is taking off.", "An air plane is taking off.", "5.000"),
                                       stsb_row(1, "A man plays a flute.", "A man plays a big flute.", "3.800")])
    dataset, examples, stats = load_task_dataset("STS-B", tmp_path, "train", tokenizer, 32)
    labels = dataset.tensors[3]
    assert labels.dtype == torch.float32 and labels.tolist() == pytest.approx([5.0, 3.8])
    assert get_processor("sts-b").output_mode == "regression" and get_processor("sts-b").num_labels == 1
    bad = write_tsv(tmp_path / "dev.tsv", [STSB_HEADER, stsb_row(0, "a", "b", "high")])
    with pytest.raises(DataError, match=rf"{bad}:2: score 'high' is not a number"):
        get_processor("sts-b").read_split(tmp_path, "dev")[0]


def test_mnli_matched_and_mismatched(tmp_path, tokenizer):
    write_tsv(tmp_path / "train.tsv", [MNLI_TRAIN_HEADER, mnli_row(0, "He ran.", "He moved.", "entailment")])
    write_tsv(tmp_path / "dev_matched.tsv", [MNLI_DEV_HEADER,
                                             mnli_row(0, "It rains.", "It is dry.", "contradiction", True)])
    write_tsv(tmp_path / "dev_mismatched.tsv", [MNLI_DEV_HEADER, mnli_row(0, "A cat.", "An animal.", "neutral", True),
                                                mnli_row(1, "A dog.", "A pet.", "entailment", True)])
    mnli, mnli_mm = get_processor("MNLI"), get_processor("mnli-mm")
    assert mnli.get_labels() == ["contradiction", "entailment", "neutral"]
    assert [e.text_a for e in mnli.read_split(tmp_path, "train")[0]] == ["He ran."]
    assert [(e.text_b, e.label) for e in mnli.read_split(tmp_path, "dev")[0]] == [("It is dry.", "contradiction")]
    assert [e.label for e in mnli_mm.read_split(tmp_path, "dev")[0]] == ["neutral", "entailment"]
    dataset, _, stats = load_task_dataset("mnli", tmp_path, "dev_mm", tokenizer, 16)
    assert dataset.tensors[3].tolist() == [2, 1] and stats.path.endswith("dev_mismatched.tsv")


@pytest.mark.parametrize("task,header,labels", [
    ("QNLI", "index\tquestion\tsentence\tlabel", ("entailment", "not_entailment")),
    ("RTE", "index\tsentence1\tsentence2\tlabel", ("entailment", "not_entailment")),
    ("WNLI", "index\tsentence1\tsentence2\tlabel", ("0", "1")),
])
def test_pair_tasks_label_last(tmp_path, task, header, labels):
    write_tsv(tmp_path / "train.tsv", [header, f"0\tFirst one.\tSecond one.\t{labels[1]}",
                                       f"1\tThird one.\tFourth one.\t{labels[0]}"])
    proc = get_processor(task)
    examples = proc.read_split(tmp_path, "train")[0]
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("First one.", "Second one.", labels[1]), ("Third one.", "Fourth one.", labels[0])]
    assert proc.get_labels() == list(labels)
    path = write_tsv(tmp_path / "dev.tsv", [header, "0\ta\tb\tmaybe"])
    with pytest.raises(DataError, match=rf"{path}:2: unknown label 'maybe'"):
        proc.read_split(tmp_path, "dev")[0]


def test_wrong_column_count_reports_file_and_line(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", ["sentence\tlabel", "good\t1", "", "bad\t0\textra"])
    with pytest.raises(DataError) as err:
        get_processor("sst-2").read_split(tmp_path, "train")[0]
    assert str(err.value).startswith(f"{path}:4: expected 2 tab-separated columns, found 3")


def test_non_utf8_row_is_a_bad_row(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"sentence\tlabel\r\ngood\t1\r\ncaf\xe9\t0\r\n")
    with pytest.raises(DataError, match=rf"{path}:3: the line is not valid UTF-8"):
        get_processor("sst-2").read_split(tmp_path, "train")[0]
    examples, stats = get_processor("sst-2").read_split(tmp_path, "train", skip_bad_rows=True)
    assert [(e.text_a, e.label) for e in examples] == [("good", "1")] and stats.num_bad_rows == 1


def test_skip_bad_rows_count_in_stats(tmp_path, tokenizer):
    write_tsv(tmp_path / "train.tsv", ["sentence\tlabel", "good\t1", "bad\t7", "worse\t0\tx", "fine\t0"])
    with pytest.raises(DataError):
        load_task_dataset("sst-2", tmp_path, "train", tokenizer, 8)
    dataset, examples, stats = load_task_dataset("sst-2", tmp_path, "train", tokenizer, 8, skip_bad_rows=True)
    assert len(dataset) == 2 and [e.text_a for e in examples] == ["good", "fine"]
    assert stats.num_bad_rows == 2 and stats.num_examples == 2


def test_empty_missing_and_headerless_files(tmp_path):
    proc = get_processor("sst-2")
    with pytest.raises(DataError, match="not found"):
        proc.read_split(tmp_path, "train")[0]
    write_tsv(tmp_path / "train.tsv", [])
    with pytest.raises(DataError, match="is empty"):
        proc.read_split(tmp_path, "train")[0]
    write_tsv(tmp_path / "train.tsv", ["a fine film\t1", "a bad film\t0"])
    with pytest.raises(DataError, match=r"train.tsv:1: missing or wrong header line"):
        proc.read_split(tmp_path, "train")[0]
    write_tsv(tmp_path / "train.tsv", ["sentence\tlabel"])
    with pytest.raises(DataError, match="no usable examples"):
        proc.read_split(tmp_path, "train")[0]


def test_aug_file_and_data_dir_hint(tmp_path):
    write_tsv(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment"])
    proc = get_processor("rte")
    with pytest.raises(DataError, match="train_aug.tsv"):
        proc.read_split(tmp_path / "RTE", "aug")[0]
    write_tsv(tmp_path / "RTE" / "train_aug.tsv", ["index\tsentence1\tsentence2\tlabel", "0\tc\td\tnot_entailment"])
    assert [e.text_a for e in proc.read_split(tmp_path / "RTE", "aug")[0]] == ["c"]
    with pytest.raises(DataError, match=rf"did you mean `data_dir` {tmp_path / 'RTE'}"):
        proc.read_split(tmp_path, "train")[0]


# --------------------------------------------------------------------------------------------------
# Feature conversion
# --------------------------------------------------------------------------------------------------
def test_pair_features_segments_and_padding(tokenizer, vocab_ids):
    ex = InputExample("g", "the cat sat", "on the mat", "1")
    (feat,) = convert_examples_to_features([ex], ["0", "1"], 12, tokenizer, "classification")
    tokens = ["[CLS]", "the", "cat", "sat", "[SEP]", "on", "the", "mat", "[SEP]"]
    assert feat.input_ids == [vocab_ids[t] for t in tokens] + [0, 0, 0]
    assert feat.input_mask == [1] * 9 + [0] * 3
    assert feat.segment_ids == [0] * 5 + [1] * 4 + [0] * 3
    assert feat.label_id == 1 and feat.seq_length == 9


def test_truncation_longer_sequence_first(tokenizer, vocab_ids):
    a = "one two three four five six seven eight nine ten"
    ex = InputExample("g", a, "red blue", "0")
    (feat,) = convert_examples_to_features([ex], ["0", "1"], 9, tokenizer, "classification")
    tokens = ["[CLS]", "one", "two", "three", "four", "[SEP]", "red", "blue", "[SEP]"]
    assert feat.input_ids == [vocab_ids[t] for t in tokens] and feat.seq_length == 9
    # Equal lengths: the second sequence loses a token first, then they alternate (4+4 -> 3+2).
    ex = InputExample("g", "one two three four", "five six seven eight", "0")
    (feat,) = convert_examples_to_features([ex], ["0", "1"], 8, tokenizer, "classification")
    tokens = ["[CLS]", "one", "two", "three", "[SEP]", "five", "six", "[SEP]"]
    assert feat.input_ids == [vocab_ids[t] for t in tokens]
    assert feat.segment_ids == [0] * 5 + [1] * 3
    # Single sentence: cut at the end.
    (feat,) = convert_examples_to_features([InputExample("g", a, None, "1")], ["0", "1"], 5, tokenizer,
                                           "classification")
    assert feat.input_ids == [vocab_ids[t] for t in ["[CLS]", "one", "two", "three", "[SEP]"]]


def test_features_to_dataset_dtypes(tokenizer):
    examples = [InputExample("a", "good", None, "1"), InputExample("b", "bad film", None, "0")]
    feats = convert_examples_to_features(examples, ["0", "1"], 6, tokenizer, "classification")
    input_ids, mask, segs, labels, lengths = features_to_dataset(feats, "classification").tensors
    assert input_ids.shape == (2, 6) and input_ids.dtype == torch.long
    assert labels.dtype == torch.long and labels.tolist() == [1, 0] and lengths.tolist() == [3, 4]
    assert mask.sum(1).tolist() == lengths.tolist() and segs.sum().item() == 0
    reg = convert_examples_to_features([InputExample("c", "x", "y", "2.5")], [None], 8, tokenizer, "regression")
    assert features_to_dataset(reg, "regression").tensors[3].dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# Feature cache
# --------------------------------------------------------------------------------------------------
class CountingTokenizer:
    """Wraps a tokenizer and counts tokenize() calls, to see whether features were rebuilt."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.vocab = inner.vocab
        self.do_lower_case = inner.do_lower_case

    def tokenize(self, text):
        self.calls += 1
        return self.inner.tokenize(text)

    def convert_tokens_to_ids(self, tokens):
        return self.inner.convert_tokens_to_ids(tokens)


def test_feature_cache_hit_and_invalidation(tmp_path, tokenizer, bert_vocab):
    data = tmp_path / "data"
    cache = tmp_path / "cache"
    tsv = write_tsv(data / "train.tsv", ["sentence\tlabel", "a charming film\t1", "dull\t0"])
    counting = CountingTokenizer(tokenizer)

    def load(tok, max_len=16):
        return load_task_dataset("SST-2", data, "train", tok, max_len, cache_dir=cache)

    first, _, stats = load(counting)
    assert not stats.cache_hit and counting.calls == 2 and Path(stats.cache_path).is_file()
    second, examples, stats = load(counting)
    assert stats.cache_hit and counting.calls == 2 and len(examples) == 2
    for a, b in zip(first.tensors, second.tensors):
        assert a.dtype == b.dtype and torch.equal(a, b)

    _, _, stats = load(counting, max_len=8)  # another sequence length: its own entry
    assert not stats.cache_hit and counting.calls == 4

    cased = BertTokenizer.from_pretrained(str(bert_vocab), do_lower_case=False)
    dataset, _, stats = load(cased)
    assert not stats.cache_hit
    assert load(counting)[2].cache_hit is False  # the cased run replaced the entry

    vocab = (tmp_path / "vocab.txt")
    lines = bert_vocab.read_text(encoding="utf-8").splitlines()
    lines[1000], lines[1001] = lines[1001], lines[1000]
    vocab.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert not load(BertTokenizer.from_pretrained(str(vocab)))[2].cache_hit

    write_tsv(tsv.parent / "train.tsv", ["sentence\tlabel", "a charming film\t1", "dull\t0", "new row\t1"])
    os.utime(tsv, ns=(1, 1))
    dataset, _, stats = load(counting)
    assert not stats.cache_hit and len(dataset) == 3
    assert load(counting)[2].cache_hit

    Path(stats.cache_path).write_bytes(b"not a torch file")
    dataset, _, stats = load(counting)
    assert not stats.cache_hit and len(dataset) == 3
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
