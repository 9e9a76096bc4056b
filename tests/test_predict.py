"""Using a trained student: `predict` (Python API) and `python -m apps.predict`, against a by-hand forward pass."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers

from spikingbert.apps import predict as predict_app
from spikingbert.cli.edge import run_cli
from spikingbert.core.errors import UsageError
from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
from spikingbert.models.stopping import StopRule, class_margins, stop_steps
from tests.helpers.students import REPO_ROOT, tiny_config

WORDS = ["a", "gorgeous", "witty", "film", "ugly", "and", "pointless", "movie", "the", "plot", "is", "dull",
         "bright", "cast", "very", ",", "."]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
TEXTS = ["A gorgeous , witty film", "ugly and pointless", "the plot is dull", "Bright cast",
         "very very very very very very very very very very very very very very dull movie ."]


def _student(directory, num_labels=2, **recorded):
    torch.manual_seed(num_labels)
    config = tiny_config(vocab=len(VOCAB), num_labels=num_labels, t_conv=6, **recorded)
    model = SpikingBertForSequenceClassification(config).double().eval()
    vocab = directory.parent / f"{directory.name}-vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    model.save_pretrained(directory, vocab_file=vocab)
    return directory


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return _student(tmp_path_factory.mktemp("predict") / "student", id2label={"0": "rotten", "1": "fresh"},
                    do_lower_case=True, max_seq_length=12)


def _by_hand(model, text, pair=None, max_len=12, t_conv=None):
    """Logits of one input, tokenized by hand (every word is in the vocabulary), run alone without padding."""
    a = [VOCAB.index(w) for w in text.lower().split()]
    b = [VOCAB.index(w) for w in pair.lower().split()] if pair is not None else None
    if b is None:
        ids, types = [2] + a[:max_len - 2] + [3], [0] * (min(len(a), max_len - 2) + 2)
    else:
        while len(a) + len(b) > max_len - 3:
            (a if len(a) > len(b) else b).pop()
        ids, types = [2] + a + [3] + b + [3], [0] * (len(a) + 2) + [1] * (len(b) + 1)
    with torch.no_grad():
        out = model(torch.tensor([ids]), torch.tensor([types]), torch.ones(1, len(ids), dtype=torch.long),
                    t_conv=t_conv)
    return out.logits[0].double()


def test_api_gives_label_names_and_probabilities_of_a_by_hand_forward(student):
    clf = SpikingBertForSequenceClassification.from_pretrained(student).double()
    clf.train()
    predictions = clf.predict(TEXTS, batch_size=2)
    assert clf.training                                             # the caller's mode is restored
    assert [p.text for p in predictions] == TEXTS                   # input order, though run longest first
    clf.eval()
    for p in predictions:
        probs = torch.softmax(_by_hand(clf, p.text), 0).tolist()
        assert list(p.probabilities) == ["rotten", "fresh"]
        assert list(p.probabilities.values()) == pytest.approx(probs, abs=1e-6)
        assert p.label == ["rotten", "fresh"][max(range(2), key=probs.__getitem__)]
        assert p.score == pytest.approx(max(probs), abs=1e-6) and p.steps == 6
    assert {p.steps for p in clf.predict(TEXTS[:2], t_conv=3)} == {3}


def test_loaded_in_eval_mode_and_one_string_gives_one_prediction(student):
    """As Hugging Face's: `from_pretrained` returns eval mode (the same logits twice), `predict` takes one string."""
    clf = SpikingBertForSequenceClassification.from_pretrained(student).double()
    assert not clf.training and not any(m.training for m in clf.modules())
    ids, types, mask = torch.tensor([[2, 5, 6, 3]]), torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4)
    with torch.no_grad():
        assert torch.equal(clf(ids, types, mask).logits, clf(ids, types, mask).logits)
    one = clf.predict(TEXTS[0])
    assert one == clf.predict([TEXTS[0]])[0] and one.text == TEXTS[0]
    fresh = torch.softmax(_by_hand(clf, TEXTS[0]), 0)[1].item()
    assert one.probabilities["fresh"] == pytest.approx(fresh, abs=1e-6)


def test_adaptive_t_stops_each_text_at_its_own_step(student, capsys):
    """With a stopping rule each text stops where the rule puts it on by-hand runs at t = 1..6, in input order
    (the texts run longest first, in batches), with the probabilities of that step."""
    clf = SpikingBertForSequenceClassification.from_pretrained(student).double().eval()
    by_step = {text: torch.stack([_by_hand(clf, text, t_conv=t) for t in range(1, 7)]) for text in TEXTS}
    classes, margins = class_margins(torch.stack(list(by_step.values())))                 # (texts, 6)
    values = sorted(set(margins[:, 1:].flatten().tolist()))
    rule = StopRule(margin=(values[len(values) // 2] + values[len(values) // 2 + 1]) / 2, window=2, min_steps=2)
    expected = stop_steps(classes, margins, rule).tolist()
    assert len(set(expected)) > 1                                   # texts stop at different steps
    predictions = clf.predict(TEXTS, batch_size=2, adaptive=rule)
    assert [p.text for p in predictions] == TEXTS and [p.steps for p in predictions] == expected
    for p, stop in zip(predictions, expected):
        probs = torch.softmax(by_step[p.text][stop - 1], 0).tolist()
        assert list(p.probabilities.values()) == pytest.approx(probs, abs=1e-6)
    capsys.readouterr()
    run_main(["--model", str(student), "--adaptive_t", repr(rule.margin), "--adaptive_window", "2",
              "--adaptive_min_steps", "2", "--batch_size", "2", *[a for t in TEXTS for a in ("--text", t)]])
    shown = capsys.readouterr().out.splitlines()
    assert [int(line.split("  steps ")[1].split()[0]) for line in shown] == expected


def test_sentence_pairs_and_regression(tmp_path):
    pairs = ["the plot is dull", "a witty film"]
    clf = SpikingBertForSequenceClassification.from_pretrained(
        _student(tmp_path / "pairs", num_labels=3, do_lower_case=True, max_seq_length=10)).double()
    got = clf.predict(["a gorgeous film and a bright cast", "ugly movie"], pairs)
    for p, pair in zip(got, pairs):
        assert p.text_pair == pair and list(p.probabilities) == ["LABEL_0", "LABEL_1", "LABEL_2"]
        want = torch.softmax(_by_hand(clf, p.text, pair, max_len=10), 0).tolist()
        assert list(p.probabilities.values()) == pytest.approx(want, abs=1e-6)
    reg = SpikingBertForSequenceClassification.from_pretrained(
        _student(tmp_path / "sts", num_labels=1, do_lower_case=True, max_seq_length=12)).double()
    (p,) = reg.predict(["ugly movie"], ["a witty film"])
    assert reg.predict("ugly movie", "a witty film") == p
    assert p.label is None and p.probabilities == {}
    assert p.score == pytest.approx(_by_hand(reg, "ugly movie", "a witty film")[0].item(), abs=1e-6)


def test_api_refuses_bad_inputs_and_untrained_heads(student, tmp_path):
    clf = SpikingBertForSequenceClassification.from_pretrained(student)
    for texts, pairs, message in ((["ok", " "], None, "input 2: the text is empty"),
                                  ("one string", ["a", "b"], "both as one string"),
                                  (["a", "b"], ["c"], "2 texts but 1 text pairs")):
        with pytest.raises(ValueError, match=message):
            clf.predict(texts, pairs)
    config_only = tmp_path / "new"
    tiny_config(vocab=len(VOCAB)).save_pretrained(config_only)
    with pytest.raises(UsageError, match="no trained classifier"):
        SpikingBertForSequenceClassification.from_pretrained(config_only).predict(["a film"])


def test_transformers_refuses_a_student_dir(student):
    assert json.loads((student / "config.json").read_text())["model_type"] == "spiking_bert"
    with pytest.raises(ValueError, match="model type `spiking_bert` but Transformers does not recognize"):
        transformers.AutoModelForSequenceClassification.from_pretrained(str(student))


def test_old_dir_settings_come_from_its_args_json(student, tmp_path):
    old = _student(tmp_path / "old")                               # same weights as `student`, nothing recorded
    config = json.loads((old / "config.json").read_text())
    config["model_type"] = "bert"                                  # written before the student had its own type
    (old / "config.json").write_text(json.dumps(config))
    (old / "args.json").write_text(json.dumps({"task_name": "SST-2", "data_dir": "nowhere", "do_lower_case": True,
                                               "max_seq_length": 12}))
    want = SpikingBertForSequenceClassification.from_pretrained(student).predict(TEXTS)
    got = SpikingBertForSequenceClassification.from_pretrained(old).predict(TEXTS)   # the 17-token text is cut at 12
    assert [list(p.probabilities.values()) for p in got] == [list(p.probabilities.values()) for p in want]
    assert got[0].label in ("LABEL_0", "LABEL_1")                  # the API alone knows no task names
    clf = predict_app.load_student(predict_app.parse_predict_args(["--model", str(old), "--text", "x"]))
    assert clf.config.label_names == ["negative", "positive"]      # SST-2's names (no task.json found)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "task.json").write_text('{"labels": {"0": "rotten", "1": "fresh"}}')
    (old / "args.json").write_text(json.dumps({"task_name": "sst-2", "data_dir": "data"}))   # relative to a parent
    clf = predict_app.load_student(predict_app.parse_predict_args(["--model", str(old), "--text", "x"]))
    assert clf.config.label_names == ["rotten", "fresh"]
    clf = predict_app.load_student(predict_app.parse_predict_args(
        ["--model", str(old), "--text", "x", "--label_names", "bad,good"]))
    assert clf.config.label_names == ["bad", "good"]


def _cli(*argv, stdin=None, rc=0):
    proc = subprocess.run([sys.executable, "-m", "apps.predict", *map(str, argv)], cwd=REPO_ROOT, input=stdin,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == rc, proc.stderr[-2000:]
    return proc


@pytest.mark.system
@pytest.mark.slow
def test_cli_prints_and_writes_what_the_api_gives(student, tmp_path):
    want = SpikingBertForSequenceClassification.from_pretrained(student).predict(TEXTS[:2])
    proc = _cli("--model", student, "--text", TEXTS[0], "--text", TEXTS[1], "--output", tmp_path / "out.jsonl")
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(want[0].label) and f"steps 6  {TEXTS[0]}" in lines[0]
    assert f"rotten {want[1].probabilities['rotten']:.3f}" in lines[1]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert records == [p.to_dict() for p in want]
    # The JSONL it wrote is a valid input (from standard input too), and a TSV file gives the same.
    (tmp_path / "in.tsv").write_text("".join(t + "\n" for t in TEXTS[:2]))
    assert _cli("--model", student, "--input", "-", stdin=(tmp_path / "out.jsonl").read_text()).stdout == proc.stdout
    run_main(["--model", str(student), "--input", str(tmp_path / "in.tsv"), "--output", str(tmp_path / "b.jsonl")])
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "out.jsonl").read_text()


def run_main(argv, rc=0, capsys=None):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(predict_app.main, argv)
    assert exit_info.value.code == rc
    if capsys is not None:
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in err, err    # (log lines of other tests' handlers aside)
        return errors[0]


@pytest.mark.system
@pytest.mark.slow
def test_cli_errors_are_one_line(student, tmp_path, capsys):
    proc = _cli("--model", student, "--text", "", rc=2)
    assert proc.stderr.strip() == "error: --text is empty: give the text to classify"
    (tmp_path / "bad.tsv").write_text("a film\nugly\tand\tpointless\n")
    assert "bad.tsv line 2: expected a text" in run_main(["--model", str(student), "--input",
                                                          str(tmp_path / "bad.tsv")], 1, capsys)
    (tmp_path / "bad.jsonl").write_text('{"text": "a film"}\n{"txt": "x"}\n')
    assert "bad.jsonl line 2" in run_main(["--model", str(student), "--input", str(tmp_path / "bad.jsonl")], 1, capsys)
    config_only = tmp_path / "new"
    tiny_config(vocab=len(VOCAB)).save_pretrained(config_only)
    assert "no trained classifier" in run_main(["--model", str(config_only), "--text", "a"], 2, capsys)
    assert "no such directory" in run_main(["--model", str(tmp_path / "missing"), "--text", "a"], 2, capsys)
    assert "nothing to classify" in run_main(["--model", str(student)], 2, capsys)
