"""Using a trained classification student: texts in, label names and class probabilities out.

`predict` (also ``SpikingBertForSequenceClassification.predict``) tokenizes with the student directory's own
``vocab.txt`` and the settings its config.json records (``do_lower_case``, ``max_seq_length``, ``id2label``),
runs the inputs in batches of similar length and returns one `Prediction` per input, in input order (one string
in, one `Prediction` out)::

    clf = SpikingBertForSequenceClassification.from_pretrained("runs/demo/pred")
    for p in clf.predict(["a gorgeous, witty film", "ugly and pointless"]):
        print(p.label, p.probabilities, p.steps)
    clf.predict("a gorgeous, witty film").label

A regression student (one output, e.g. STS-B) gives its output as ``score`` and no label.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from spikingbert.core.errors import UsageError
from spikingbert.transformer.tokenization import BertTokenizer, is_blank, pack_inputs

from .stopping import StopRule

__all__ = ["Prediction", "predict", "model_tokenizer", "check_student", "DEFAULT_MAX_SEQ_LENGTH"]

logger = logging.getLogger(__name__)

#: Tokens per input when the directory records no ``max_seq_length`` (written before the stages recorded it).
DEFAULT_MAX_SEQ_LENGTH = 128
#: Batches are padded to a multiple of this many tokens, as the dev evaluation does (same logits).
PAD_MULTIPLE = 16


@dataclass
class Prediction:
    """The student's answer for one input.

    Attributes:
        text / text_pair: the input (``text_pair`` None for single texts).
        label: name of the most probable class (None for a regression student).
        probabilities: class name -> softmax probability, in class order (empty for regression).
        score: the probability of ``label``, or the regression output.
        steps: simulation steps the input used (``t_conv``; with adaptive stopping, its own stop step).
    """

    text: str
    text_pair: Optional[str]
    label: Optional[str]
    score: float
    steps: int
    probabilities: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (``text_pair`` only when there is one)."""
        record = asdict(self)
        if self.text_pair is None:
            record.pop("text_pair")
        return record


def model_tokenizer(model: nn.Module) -> BertTokenizer:
    """The tokenizer of a student loaded from a directory: its ``vocab.txt`` and recorded ``do_lower_case``
    (guessed from the vocabulary, and logged, for directories that do not record it)."""
    if model.vocab_file is None:
        where = model.source if model.source is not None else "this student"
        raise UsageError(f"{where} has no vocab.txt: add the vocabulary the student was trained with")
    lower = model.config.do_lower_case
    if lower is None:
        tokenizer = _tokenizer(str(model.vocab_file), Path(model.vocab_file).stat().st_mtime_ns, False)
        lower = not any("A" <= char <= "Z" for token in tokenizer.vocab if not token.startswith("[") for char in token)
        logger.warning("%s does not record do_lower_case; using %s (its vocabulary is %s)", model.source, lower,
                       "uncased" if lower else "cased")
    tokenizer = _tokenizer(str(model.vocab_file), Path(model.vocab_file).stat().st_mtime_ns, bool(lower))
    if len(tokenizer.vocab) > model.config.vocab_size:
        raise UsageError(f"{model.vocab_file} has {len(tokenizer.vocab)} tokens but config.json has vocab_size "
                         f"{model.config.vocab_size}: use the vocab.txt the model was trained with")
    return tokenizer


@functools.lru_cache(maxsize=8)
def _tokenizer(vocab_file: str, modified_ns: int, do_lower_case: bool) -> BertTokenizer:
    """A tokenizer per vocabulary file (and its modification time) and casing, built once (reading a 30k-token
    vocab.txt takes ~60 ms): repeated ``predict`` calls reuse it."""
    return BertTokenizer(vocab_file, do_lower_case=do_lower_case)


def check_student(model: nn.Module, pairs: bool) -> None:
    """Refuse a student that cannot classify: one without a trained classifier (a config only, or a general-KD or
    intermediate-KD directory, as its ``training_stage`` says), or one given text pairs when it was trained on single
    texts (or the other way round), as its ``text_pairs`` says."""
    config, where = model.config, model.source if model.source is not None else "this student"
    untrained = config.training_stage in ("general", "intermediate") or (
        model.weights_file is None and model.source is not None) or any(
        key.startswith("classifier.") for key in model.initialised_keys)
    if untrained:
        raise UsageError(f"{where} has no trained classifier (only a config, or a {config.training_stage or 'general'}"
                         "-KD student): use the output dir of a prediction-KD run (`pred_distill`)")
    if config.text_pairs is not None and config.text_pairs != pairs:
        raise UsageError(f"{where} was trained on {'sentence pairs' if config.text_pairs else 'single texts'}: give "
                         f"{'each text its pair (`text_pair`)' if config.text_pairs else 'single texts, no pairs'}")


def _check_inputs(model: nn.Module, texts: Sequence[str], text_pairs: Optional[Sequence[str]]) -> None:
    if isinstance(texts, str) or isinstance(text_pairs, str):
        raise ValueError("give texts and text_pairs both as one string each or both as lists of strings")
    check_student(model, text_pairs is not None)
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs: give one pair per text")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or is_blank(text):
            raise ValueError(f"input {i + 1}: the text is empty")
        if text_pairs is not None and (not isinstance(text_pairs[i], str) or is_blank(text_pairs[i])):
            raise ValueError(f"input {i + 1}: the text pair is empty")


def _encode(tokenizer: BertTokenizer, texts: Sequence[str], text_pairs: Optional[Sequence[str]],
            max_seq_length: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, segment ids) of every input, ``[CLS] a [SEP] (b [SEP])`` cut to ``max_seq_length``."""
    tokens_a = tokenizer.tokenize_batch(list(texts))
    tokens_b = tokenizer.tokenize_batch(list(text_pairs)) if text_pairs is not None else [None] * len(texts)
    encoded = []
    for a, b in zip(tokens_a, tokens_b):
        tokens, segments, _ = pack_inputs(a, b, max_seq_length)
        encoded.append((tokenizer.convert_tokens_to_ids(tokens), segments))
    return encoded


def _batch(encoded: list[tuple[list[int], list[int]]], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(input_ids, token_type_ids, attention_mask)``, each (B, S), S the longest rounded up to `PAD_MULTIPLE`."""
    width = -(-max(len(ids) for ids, _ in encoded) // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = torch.zeros(len(encoded), width, dtype=torch.long)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, (token_ids, segments) in enumerate(encoded):
        ids[row, :len(token_ids)] = torch.tensor(token_ids)
        types[row, :len(segments)] = torch.tensor(segments)
        mask[row, :len(token_ids)] = 1
    return ids.to(device), types.to(device), mask.to(device)


@torch.no_grad()
def predict(model: nn.Module, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None, *,
            batch_size: int = 32, t_conv: Optional[int] = None, adaptive: Optional[StopRule] = None,
            max_seq_length: Optional[int] = None) -> Prediction | list[Prediction]:
    """Classify ``texts`` (with ``text_pairs`` for a sentence-pair task) with a trained classification student:
    one `Prediction` per text, or one `Prediction` when ``texts`` is a single string.

    Runs in eval mode (the training flag is restored) on the model's device, longest inputs first in batches of
    ``batch_size``. ``t_conv`` overrides the simulation steps; ``adaptive`` (a `models.stopping.StopRule`) stops
    each input once its prediction settles, and ``steps`` says when. ``max_seq_length``
    overrides the directory's. Raises `UsageError` for a student without a trained classifier or
    vocabulary and ValueError for empty inputs.
    """
    if isinstance(texts, str) and (text_pairs is None or isinstance(text_pairs, str)):
        return predict(model, [texts], None if text_pairs is None else [text_pairs], batch_size=batch_size,
                       t_conv=t_conv, adaptive=adaptive, max_seq_length=max_seq_length)[0]
    _check_inputs(model, texts, text_pairs)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    config = model.config
    length = max_seq_length or config.max_seq_length or min(DEFAULT_MAX_SEQ_LENGTH, config.max_position_embeddings)
    encoded = _encode(model_tokenizer(model), texts, text_pairs, length)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    device = next(model.parameters()).device
    results: list[Optional[Prediction]] = [None] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, types, mask = _batch([encoded[i] for i in rows], device)
            out = model(ids, types, mask, t_conv=t_conv, adaptive=adaptive)
            for row, logits, steps in zip(rows, out.logits.float().cpu(), out.example_steps.tolist()):
                results[row] = _prediction(config, logits, texts[row],
                                           text_pairs[row] if text_pairs is not None else None, steps)
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _prediction(config, logits: Tensor, text: str, text_pair: Optional[str], steps: int) -> Prediction:
    """One input's `Prediction` from its logits ``(num_labels,)``."""
    if config.num_labels == 1:
        return Prediction(text, text_pair, None, float(logits[0]), steps)
    probabilities = torch.softmax(logits.double(), dim=0).tolist()
    names = config.label_names
    best = max(range(len(names)), key=probabilities.__getitem__)
    return Prediction(text, text_pair, names[best], probabilities[best], steps, dict(zip(names, probabilities)))
