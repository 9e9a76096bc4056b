"""Every numeric and enum setting of the project, its type and range, declared once: `SETTINGS`.

A setting is a config.json field (teacher or student), a command-line flag, or a field of the demo's
recipe; the same name means the same thing wherever it appears. Everything that reads a setting derives
its check from this table: config files (`core.pretrained.ModelConfig`), every command line
(`spikingbert.cli`), the demo's recipe, ``predict``, and the student's forward for the per-call
overrides. A value out of range is one clear message naming the file or flag, the value and what is
allowed (`FieldSpec.config_problem`, `FieldSpec.flag_problem`).

What is not a range stays with what it constrains: that the hidden size is a multiple of the heads,
that a student supports only the erf GELU, that the demo's student layers divide the teacher's.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

from .errors import UsageError

__all__ = ["FieldSpec", "SETTINGS", "spec", "check_setting"]


@dataclass(frozen=True)
class FieldSpec:
    """The type and range a setting must have.

    ``kind``: int, float, str or bool. Numbers lie in ``[low, high]`` (``low_open`` / ``high_open``: the
    bound itself is excluded). ``cap``: ``high`` is only a sanity limit against values that overflow or
    never end (messages then name the bound that was crossed, not the interval). Strings lie among
    ``choices`` when given. ``nullable``: null (None, "not set") is allowed.
    """

    kind: type
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    nullable: bool = False
    cap: bool = False

    def _bound(self, value: float) -> str:
        return f"{value:{'d' if self.kind is int else 'g'}}"

    def _interval(self) -> str:
        low = "-inf" if self.low is None else self._bound(self.low)
        high = "inf" if self.high is None else self._bound(self.high)
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{low}, {high}{right}"

    def allowed(self) -> str:
        """The allowed values in words, e.g. ``an integer in [1, 4096]`` (config-file messages)."""
        if self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            text = "one of " + ", ".join(repr(c) for c in self.choices) if self.choices else "a string"
        else:
            text = f"{'an integer' if self.kind is int else 'a finite number'} in {self._interval()}"
        return text + (" or null" if self.nullable else "")

    def _below(self, value: float) -> bool:
        return self.low is not None and (value <= self.low if self.low_open else value < self.low)

    def _above(self, value: float) -> bool:
        return self.high is not None and (value >= self.high if self.high_open else value > self.high)

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind is bool or isinstance(value, bool):
            return self.kind is bool and isinstance(value, bool)
        if self.kind is str:
            return isinstance(value, str) and (not self.choices or value in self.choices)
        if not isinstance(value, int if self.kind is int else (int, float)):
            return False
        if self.kind is float and not math.isfinite(value):
            return False
        return not (self._below(value) or self._above(value))

    def config_problem(self, name: str, value: Any) -> Optional[str]:
        """``name must be <allowed> (got <value as JSON>)`` when a config file's ``value`` is not allowed, else None."""
        if self.accepts(value):
            return None
        return f"{name} must be {self.allowed()} (got {json.dumps(value)})"

    def flag_problem(self, value: Any) -> Optional[str]:
        """``must be ... (got <value>)`` when a parsed command-line ``value`` (None: not given) is not allowed."""
        if value is None or self.kind in (bool, str):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number (got {value})"
        below, above = self._below(value), self._above(value)
        if not (below or above):
            return None
        if self.cap or self.low is None or self.high is None:
            if below:
                return f"must be {'>' if self.low_open else '>='} {self._bound(self.low)} (got {value})"
            return f"must be {'<' if self.high_open else '<='} {self._bound(self.high)} (got {value})"
        return f"must be in {self._interval()} (got {value})"


def _count(low: int = 1, high: Optional[int] = None, nullable: bool = False) -> FieldSpec:
    return FieldSpec(int, low, high, nullable=nullable, cap=high is not None)


def _size(high: int, low: int = 1) -> FieldSpec:
    return FieldSpec(int, low, high)


def _positive(high: float, nullable: bool = False) -> FieldSpec:
    return FieldSpec(float, 0.0, high, low_open=True, nullable=nullable, cap=True)


def _fraction(**bounds: bool) -> FieldSpec:
    return FieldSpec(float, 0.0, 1.0, **bounds)


def _choice(*values: str, nullable: bool = False) -> FieldSpec:
    return FieldSpec(str, choices=values, nullable=nullable)


SETTINGS: Dict[str, FieldSpec] = {
    # ---- BERT architecture (config.json of the teacher and the student)
    "vocab_size": _size(1 << 24),
    "hidden_size": _size(1 << 16),
    "num_hidden_layers": _size(1024),
    "num_attention_heads": _size(1 << 16),
    "intermediate_size": _size(1 << 18),
    "hidden_act": _choice("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh"),
    "hidden_dropout_prob": _fraction(),
    "attention_probs_dropout_prob": _fraction(),
    "max_position_embeddings": _size(1 << 20),
    "type_vocab_size": _size(1 << 16),
    "initializer_range": FieldSpec(float, 0.0, 1e3),
    "layer_norm_eps": _fraction(low_open=True),
    "pad_token_id": FieldSpec(int, 0, None, nullable=True),
    "num_labels": _size(1 << 16),
    "classifier_head": _choice("dropout", "relu"),
    "model_type": FieldSpec(str),
    # ---- the spiking student (config.json; the spiking flags override it)
    "t_conv": _count(1, 1_000_000),
    "vth": _positive(1e6),
    "leak": _fraction(low_open=True),
    "schedule": _choice("fast", "step"),
    "time_chunk": _count(1, 1_000_000, nullable=True),
    "train_mode": _choice("ide", "bptt"),
    "ide_point": _choice("ann", "snn"),
    "feedback": FieldSpec(bool),
    "solver": _choice("broyden", "fixed_point"),
    "solver_max_iter": _count(1, 1_000_000),
    "solver_tol": _fraction(low_open=True),
    "surrogate": _choice("arctan", "sigmoid"),
    "surrogate_alpha": _positive(1e6),
    "fit_size": FieldSpec(int, 1, 1 << 16, nullable=True),
    "use_pooler": FieldSpec(bool),
    "max_seq_length": _count(3, nullable=True),
    "text_pairs": FieldSpec(bool, nullable=True),
    "training_stage": _choice("general", "intermediate", "prediction", nullable=True),
    # ---- training and evaluation runs (flags of the stages, fine-tuning and the demo's recipe)
    "train_batch_size": _count(),
    "eval_batch_size": _count(),
    "batch_size": _count(),
    "gradient_accumulation_steps": _count(),
    "learning_rate": _positive(10.0),
    "weight_decay": FieldSpec(float, 0.0),
    "warmup_proportion": _fraction(high_open=True),
    "num_train_epochs": _positive(10_000.0, nullable=True),
    "max_steps": _count(0),
    "seed": FieldSpec(int, 0, 2 ** 32, high_open=True),
    "eval_step": _count(),
    "eval_step_or_epoch_ends": _count(0),
    "save_steps": _count(0, nullable=True),
    "save_total_limit": _count(0, nullable=True),
    "logging_steps": _count(),
    "skip_nan_batches": _count(0),
    "temperature": _positive(1e4),
    "adaptive_t": FieldSpec(float, 0.0, 1.0, nullable=True),
    "adaptive_budget": FieldSpec(float, 0.0, 100.0, nullable=True),
    "adaptive_window": _count(1, 1_000_000),
    "adaptive_min_steps": _count(1, 1_000_000),
    "local_rank": _count(-1),
    "report_to": _choice("none", "tensorboard"),
    # ---- data: pregenerated corpora, GLUE downloads, the demo's datasets
    "epochs_to_generate": _count(),
    "max_seq_len": _count(3),
    "short_seq_prob": _fraction(),
    "masked_lm_prob": _fraction(),
    "max_predictions_per_seq": _count(0),
    "num_workers": _count(),
    "retries": _size(100, low=0),
    "retry_wait": FieldSpec(float, 0.0, 600.0),
    "dev_fraction": _fraction(low_open=True, high_open=True),
    "max_examples": _count(nullable=True),
    "min_bytes": _count(),
    # ---- the demo's recipe and the paper's (their other fields are the settings above)
    "general_teacher": _choice("finetuned", "pretrained"),
    "estimate_steps": _count(1, 1000),
    "stop_after": _choice("pregenerate", "general", "ikd", "pred"),
}


def spec(name: str) -> FieldSpec:
    """The `FieldSpec` of setting ``name`` (a KeyError names a setting missing from the table)."""
    return SETTINGS[name]


def check_setting(name: str, value: Any, shown: Optional[str] = None) -> None:
    """Raise `UsageError` when ``value`` (None: not set) is not allowed for setting ``name``; the message names it
    as ``shown`` (default: the setting as `core.errors.setting` writes it)."""
    problem = SETTINGS[name].flag_problem(value)
    if problem is not None:
        raise UsageError(f"{shown or f'`{name}`'} {problem}")
