"""BERT WordPiece tokenizer (basic tokenization + WordPiece), classic ``BertTokenizer`` API.

The Rust ``tokenizers`` library (BertNormalizer, BertPreTokenizer, WordPiece) does the work. Its
Unicode tables are not the ones of Python's ``unicodedata`` that the reference (slow) BERT
tokenizer uses, and it skips the NFC step and the special-token rules of the reference, so a
text is only handed to the Rust pipeline when every character in it is known to be treated
identically. Each new character is checked once (by running both pipelines on it) and
remembered. Other texts go through a Python basic tokenizer that follows the reference
step by step, and then through the same Rust WordPiece model.
"""
from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from spikingbert.core.errors import ModelError, UsageError
from spikingbert.core.files import atomic_write_text, read_capped
from spikingbert.core.remote import cached_path

logger = logging.getLogger(__name__)

VOCAB_NAME = "vocab.txt"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: Special tokens every input of the pipeline is built with (``[CLS] a [SEP] b [SEP]``, unknown words).
REQUIRED_TOKENS = ("[CLS]", "[SEP]", "[UNK]")
MAX_INPUT_CHARS_PER_WORD = 100
#: The largest vocab.txt read (bytes) and the most tokens it may hold (BERT's have 30k-120k).
VOCAB_LIMIT, MAX_TOKENS = 32 << 20, 1 << 20


def load_vocab(vocab_file: str | os.PathLike) -> "OrderedDict[str, int]":
    """Read a vocab.txt (one token a line, id = line number) into an ordered token -> id dict; a file larger than any
    vocabulary (`VOCAB_LIMIT` bytes, `MAX_TOKENS` lines) is refused before it is read."""
    text = read_capped(vocab_file, VOCAB_LIMIT, "vocabulary")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_TOKENS:
        raise UsageError(f"vocabulary file {vocab_file} has {len(lines):,} lines, more than any vocabulary "
                         f"({MAX_TOKENS:,}): use the model's vocab.txt")
    return OrderedDict((line, index) for index, line in enumerate(lines))


def is_blank(text: str) -> bool:
    """Whether ``text`` holds nothing to tokenize: only white space and control or format characters."""
    return not any(not char.isspace() and not unicodedata.category(char).startswith("C") for char in text)


def _is_whitespace(char: str) -> bool:
    if char in " \t\n\r":
        return True
    return unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_chinese_char(cp: int) -> bool:
    """CJK Unified Ideographs (and extensions / compatibility blocks) as BERT defines them."""
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _is_hangul_jamo(cp: int) -> bool:
    return 0x1100 <= cp <= 0x11FF or 0xA960 <= cp <= 0xA97F or 0xD7B0 <= cp <= 0xD7FF


def _lower_per_char(text: str) -> str:
    """Lower-case one character at a time (no context rules such as the Greek final sigma)."""
    return "".join(ch.lower() for ch in text)


class BasicTokenizer:
    """Reference BERT basic tokenization in Python: clean, space out CJK, NFC, split on whitespace,
    lower-case and strip accents (if ``do_lower_case``), split off punctuation.

    Tokens listed in ``never_split`` are neither lower-cased nor split.
    """

    def __init__(self, do_lower_case: bool = True, never_split: Iterable[str] = ()):
        self.do_lower_case = do_lower_case
        self.never_split = frozenset(never_split)

    def tokenize(self, text: str) -> list[str]:
        text = self._clean_text(text)
        text = self._tokenize_chinese_chars(text)
        text = unicodedata.normalize("NFC", text)
        split_tokens: list[str] = []
        for token in text.split():
            if token in self.never_split:
                split_tokens.append(token)
                continue
            if self.do_lower_case:
                token = self._strip_accents(token.lower())
            split_tokens.extend(self._split_on_punctuation(token))
        return " ".join(split_tokens).split()

    @staticmethod
    def _clean_text(text: str) -> str:
        out = []
        for char in text:
            cp = ord(char)
            if cp == 0 or cp == 0xFFFD or _is_control(char):
                continue
            out.append(" " if _is_whitespace(char) else char)
        return "".join(out)

    @staticmethod
    def _tokenize_chinese_chars(text: str) -> str:
        return "".join(f" {char} " if _is_chinese_char(ord(char)) else char for char in text)

    @staticmethod
    def _strip_accents(text: str) -> str:
        return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")

    @staticmethod
    def _split_on_punctuation(text: str) -> list[str]:
        pieces: list[str] = []
        start_new_word = True
        for char in text:
            if _is_punctuation(char):
                pieces.append(char)
                start_new_word = True
            else:
                if start_new_word:
                    pieces.append("")
                    start_new_word = False
                pieces[-1] += char
        return pieces


def pack_inputs(tokens_a: list[str], tokens_b: list[str] | None,
                max_seq_length: int) -> tuple[list[str], list[int], bool]:
    """BERT's model input for one text (pair): ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``.

    Returns the tokens, their segment ids (0 up to and including the first [SEP], 1 after it) and whether
    anything was cut to fit ``max_seq_length`` tokens: a pair loses tokens from the end of its longer text
    first, a single text is cut at its end. ``tokens_a`` and ``tokens_b`` are not modified.
    """
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be at least 3 (got {max_seq_length})")
    tokens_a = list(tokens_a)
    if tokens_b is None:
        truncated = len(tokens_a) > max_seq_length - 2
        tokens = ["[CLS]", *tokens_a[:max_seq_length - 2], "[SEP]"]
        return tokens, [0] * len(tokens), truncated
    tokens_b = list(tokens_b)
    truncated = False
    while len(tokens_a) + len(tokens_b) > max_seq_length - 3:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()
        truncated = True
    tokens = ["[CLS]", *tokens_a, "[SEP]", *tokens_b, "[SEP]"]
    return tokens, [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1), truncated


class BertTokenizer:
    """End-to-end BERT tokenizer: basic tokenization, then greedy longest-match WordPiece.

    Special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]``, ``[UNK]``) written in the text,
    with exactly that spelling, are kept as single tokens.

    Attributes:
        vocab: ordered dict token -> id read from ``vocab_file``.
        ids_to_tokens: ordered dict id -> token.
        do_lower_case: lower-case and strip accents before WordPiece.
        vocab_file: path of the vocab.txt used.
    """

    def __init__(self, vocab_file: str | os.PathLike, do_lower_case: bool = True, unk_token: str = "[UNK]"):
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise ModelError(f"vocabulary file {vocab_file} not found: pass a model directory with a {VOCAB_NAME} "
                                 "or the path of a vocab.txt")
        self.vocab_file = vocab_file
        try:
            self.vocab = load_vocab(vocab_file)
        except UnicodeDecodeError as err:
            raise UsageError(f"vocabulary file {vocab_file} is not UTF-8 text ({err.reason}): use a BERT "
                                  "vocab.txt") from None
        missing = [token for token in dict.fromkeys((*REQUIRED_TOKENS, unk_token)) if token not in self.vocab]
        if missing:
            raise UsageError(f"vocabulary file {vocab_file} ({len(self.vocab)} tokens) has no "
                                  f"{' or '.join(missing)} token: every input is built as [CLS] text [SEP] with "
                                  f"{unk_token} for unknown words; use the vocab.txt the model was trained with")
        self.ids_to_tokens = OrderedDict((idx, tok) for tok, idx in self.vocab.items())
        self.do_lower_case = do_lower_case
        self.unk_token = unk_token
        self.special_tokens = tuple(tok for tok in SPECIAL_TOKENS if tok in self.vocab)
        self._special_re = re.compile("(" + "|".join(re.escape(tok) for tok in self.special_tokens) + ")")
        self._basic = BasicTokenizer(do_lower_case=do_lower_case, never_split=self.special_tokens)

        model = WordPiece(vocab=dict(self.vocab), unk_token=unk_token,
                          max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)
        # Full Rust pipeline, used for texts made only of characters known to be handled identically.
        self._fast = Tokenizer(model)
        self._fast.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=do_lower_case)
        self._fast.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._fast.add_special_tokens([AddedToken(tok, normalized=False, special=True) for tok in self.special_tokens])
        # WordPiece alone, fed with words produced by the Python basic tokenizer.
        self._wordpiece = Tokenizer(model)
        printable_ascii = {chr(cp) for cp in range(32, 127)} | set("\t\n\r")
        self._safe_chars: set[str] = set(printable_ascii)
        self._unsafe_chars: set[str] = set()

    @classmethod
    def from_pretrained(cls, dir_or_vocab_file_or_url: str | os.PathLike, do_lower_case: bool = True,
                        cache_dir: str | os.PathLike | None = None) -> "BertTokenizer":
        """Load from a model directory holding vocab.txt (or its Hugging Face Hub name), a vocab.txt file, or a URL /
        s3:// path of either (archives are extracted; see :func:`core.remote.cached_path`)."""
        resolved = cached_path(dir_or_vocab_file_or_url, cache_dir=cache_dir)
        vocab_file = resolved / VOCAB_NAME if resolved.is_dir() else resolved
        if not vocab_file.is_file():
            raise ModelError(f"{dir_or_vocab_file_or_url} has no {VOCAB_NAME}: pass a BERT model directory "
                                 "or the path of a vocab.txt")
        return cls(vocab_file, do_lower_case=do_lower_case)

    def __len__(self) -> int:
        return len(self.vocab)

    # ----------------------------------------------------------------------------------------------
    # Tokenization
    # ----------------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into WordPiece tokens (no [CLS]/[SEP] added)."""
        if self._is_fast_safe(text):
            return self._fast.encode(text, add_special_tokens=False).tokens
        return self._wordpiece_words(self._basic_words(text))[0]

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[str]]:
        """``[self.tokenize(t) for t in texts]``, with the Rust pipeline running texts in parallel."""
        return [tokens for tokens, _ in self._encode_many(texts)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no [CLS]/[SEP] added); same as ``convert_tokens_to_ids(tokenize(t))``."""
        return [ids for _, ids in self._encode_many(texts)]

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        unk_id = self.vocab[self.unk_token]
        return [self.vocab.get(token, unk_id) for token in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.ids_to_tokens.get(int(i), self.unk_token) for i in ids]

    def save_vocabulary(self, directory: str | os.PathLike) -> Path:
        """Write vocab.txt (atomically) into ``directory`` and return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / VOCAB_NAME
        tokens = sorted(self.vocab, key=self.vocab.__getitem__)
        atomic_write_text(target, "".join(token + "\n" for token in tokens))
        return target

    # ----------------------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------------------
    def _encode_many(self, texts: Sequence[str]) -> list[tuple[list[str], list[int]]]:
        results: list[tuple[list[str], list[int]] | None] = [None] * len(texts)
        fast_idx = [i for i, text in enumerate(texts) if self._is_fast_safe(text)]
        if fast_idx:
            encodings = self._fast.encode_batch([texts[i] for i in fast_idx], add_special_tokens=False)
            for i, enc in zip(fast_idx, encodings):
                results[i] = (enc.tokens, enc.ids)
        for i, text in enumerate(texts):
            if results[i] is None:
                results[i] = self._wordpiece_words(self._basic_words(text))
        return results  # type: ignore[return-value]

    def _basic_words(self, text: str) -> list[str]:
        """Words before WordPiece, exactly as the reference tokenizer produces them."""
        words: list[str] = []
        for chunk in self._special_re.split(text) if self.special_tokens else [text]:
            if chunk in self.special_tokens:
                words.append(chunk)
            elif chunk:
                words.extend(self._basic.tokenize(_lower_per_char(chunk) if self.do_lower_case else chunk))
        return words

    def _wordpiece_words(self, words: list[str]) -> tuple[list[str], list[int]]:
        if not words:
            return [], []
        enc = self._wordpiece.encode(words, is_pretokenized=True, add_special_tokens=False)
        return enc.tokens, enc.ids

    def _is_fast_safe(self, text: str) -> bool:
        chars = set(text)
        if chars <= self._safe_chars:
            return True
        for char in chars - self._safe_chars - self._unsafe_chars:
            (self._safe_chars if self._char_is_fast_safe(char) else self._unsafe_chars).add(char)
        return chars <= self._safe_chars

    def _char_is_fast_safe(self, char: str) -> bool:
        """Whether the Rust pipeline treats ``char`` exactly as the reference does, in any context.

        Characters that NFC could combine with a neighbour (marks, Hangul jamo), characters the
        cleaning step removes (which could assemble a special token) and characters whose
        classification differs between the two Unicode tables are not.
        """
        cp = ord(char)
        if (cp == 0 or cp == 0xFFFD or _is_control(char) or unicodedata.category(char).startswith("M")
                or _is_hangul_jamo(cp) or unicodedata.normalize("NFC", char) != char):
            return False
        probe = f"a{char}b"
        normalized = self._fast.normalizer.normalize_str(probe)
        rust_words = [word for word, _ in self._fast.pre_tokenizer.pre_tokenize_str(normalized)]
        return rust_words == self._basic_words(probe)
