"""SpikingBERT student (SPEC §1, §2, §5), readable top-down.

* :class:`SpikingBertConfig` — BERT fields plus the spiking settings.
* :class:`SpikingBertModel` — the chain of neuron layers E, then K, V, A, O1, I, O2
  per encoder layer; simulates ``T`` steps and, when gradients are wanted,
  evaluates the equivalent rate network (implicit differentiation) or unrolls
  the simulation with a surrogate gradient (BPTT baseline).
* :class:`SpikingBertForDistillation` / :class:`SpikingBertForSequenceClassification`
  — the ``fit_dense`` projection to the teacher's width and the classifier.

Simulation schedule: the network is feed-forward in space, so each neuron
layer can be advanced over a whole chunk of steps at once (time folded into the
GEMM rows); only the elementwise membrane update is sequential in ``t``.
``schedule="step"`` advances one step at a time through all layers (the textbook
order). Both give the same spikes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from modules.blocks import SpikingBertEmbeddings, SpikingBertEncoder
from modules.implicit import implicit_reattach, replace
from modules.neuron import SURROGATES, if_scan, if_scan_surrogate
from modules.solvers import SOLVERS, SolverInfo
from transformer.file_utils import atomic_write, atomic_write_text, cached_path, describe_load_error
from transformer.linear import Linear

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
VOCAB_NAME = "vocab.txt"

#: Elements of the largest per-chunk current tensor the fast schedule aims for (bounds eval memory).
_CHUNK_BUDGET = 1 << 22


class SpikingConfigError(ValueError):
    """A student configuration or checkpoint the user must fix; the message says what to do."""


@dataclass
class SpikingBertConfig:
    """Student configuration: Hugging Face BERT fields plus the spiking and training settings."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    model_type: str = "bert"
    # spiking simulation
    t_conv: int = 100                 # simulation steps T
    vth: float = 1.0                  # firing threshold
    leak: float = 1.0                 # 1.0 = integrate-and-fire, (0, 1) = leaky
    schedule: str = "fast"            # "fast" (time folded into GEMMs) or "step" (one step at a time)
    time_chunk: Optional[int] = None  # steps per chunk of the fast schedule (None: sized automatically)
    # training
    train_mode: str = "ide"           # "ide" (implicit differentiation) or "bptt" (surrogate gradient)
    ide_point: str = "ann"            # "ann" (published) or "snn" (Jacobians at the simulated rates)
    feedback: bool = False            # Linear from the last O2 back into E
    solver: str = "broyden"           # backward solver with feedback
    solver_max_iter: int = 30
    solver_tol: float = 1e-4
    surrogate: str = "sigmoid"        # BPTT surrogate derivative
    surrogate_alpha: float = 4.0
    # heads
    fit_size: Optional[int] = None    # teacher hidden size for fit_dense (None: hidden_size)
    use_pooler: bool = False
    num_labels: int = 2
    extra: dict = field(default_factory=dict, repr=False)  # unknown config.json fields, kept on save

    def __post_init__(self):
        if self.fit_size is None:
            self.fit_size = self.hidden_size
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SpikingConfigError` naming the first setting that cannot work."""
        checks = [
            (self.t_conv >= 1, f"t_conv must be >= 1 (got {self.t_conv})"),
            (self.vth > 0, f"vth must be > 0 (got {self.vth})"),
            (0 < self.leak <= 1, f"leak must be in (0, 1] (got {self.leak})"),
            (self.hidden_size % self.num_attention_heads == 0,
             f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"),
            (self.hidden_act == "gelu", f"hidden_act {self.hidden_act!r} is not supported (only 'gelu', erf form)"),
            (self.schedule in ("fast", "step"), f"schedule must be 'fast' or 'step' (got {self.schedule!r})"),
            (self.train_mode in ("ide", "bptt"), f"train_mode must be 'ide' or 'bptt' (got {self.train_mode!r})"),
            (self.ide_point in ("ann", "snn"), f"ide_point must be 'ann' or 'snn' (got {self.ide_point!r})"),
            (self.solver in SOLVERS, f"solver must be one of {sorted(SOLVERS)} (got {self.solver!r})"),
            (self.surrogate in SURROGATES, f"surrogate must be one of {sorted(SURROGATES)} (got {self.surrogate!r})"),
            (self.time_chunk is None or self.time_chunk >= 1, f"time_chunk must be >= 1 (got {self.time_chunk})"),
            (self.num_labels >= 1, f"num_labels must be >= 1 (got {self.num_labels})"),
        ]
        for ok, message in checks:
            if not ok:
                raise SpikingConfigError(message)

    # ---- (de)serialisation -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides) -> "SpikingBertConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown_overrides = set(overrides) - known
        if unknown_overrides:
            raise SpikingConfigError(f"unknown student setting(s): {sorted(unknown_overrides)}")
        merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        kwargs = {k: v for k, v in merged.items() if k in known}
        extra = {k: v for k, v in merged.items() if k not in known and k != "extra"}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides) -> "SpikingBertConfig":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SpikingConfigError(f"{path}: no such file; a student dir needs a config.json") from None
        except json.JSONDecodeError as e:
            raise SpikingConfigError(f"{path}: not valid JSON ({e}); fix or replace the config") from None
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "SpikingBertConfig":
        path = Path(_resolve(path))
        return cls.from_json_file(path / CONFIG_NAME if path.is_dir() else path, **overrides)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **data}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        atomic_write_text(Path(directory) / CONFIG_NAME, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


@dataclass
class SpikingBertOutput:
    """Outputs of the student models.

    Attributes:
        rates: ``L+1`` tensors ``(B, S, H)`` — average spiking rate of E and of each O2 layer.
        attention_scores: ``L`` tensors ``(B, nh, S, S)``, pre-softmax with the mask added; from the
            equivalent network in training, the time average of the simulated scores in evaluation
            (only when ``output_attentions``), else empty.
        reps: ``L+1`` tensors ``(B, S, H_teacher)`` — ``fit_dense(rates)``.
        logits: ``(B, num_labels)`` for the classification student, else ``None``.
        layer_rates: rates of every neuron layer keyed ``"E"``, ``"{k}.K"`` … ``"{k}.O2"``
            (``(B, S, width)``), when ``output_layer_rates``.
        solver_info: filled during backward with one :class:`SolverInfo` per implicit solve (feedback only).
        steps: simulation steps that ran (``t_conv`` unless adaptive stopping ended early).
    """

    rates: tuple[Tensor, ...]
    attention_scores: tuple[Tensor, ...] = ()
    reps: tuple[Tensor, ...] = ()
    logits: Optional[Tensor] = None
    layer_rates: Optional[dict[str, Tensor]] = None
    solver_info: list[SolverInfo] = field(default_factory=list)
    steps: int = 0


class SpikingBertModel(nn.Module):
    """Embeddings (layer E) and ``num_hidden_layers`` spiking encoder layers."""

    def __init__(self, config: SpikingBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = SpikingBertEmbeddings(config)
        self.encoder = SpikingBertEncoder(config)
        self.feedback = Linear(config.hidden_size, config.hidden_size, bias=False) if config.feedback else None

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        t_conv: Optional[int] = None,
        vth: Optional[float] = None,
        leak: Optional[float] = None,
        output_attentions: bool = False,
        output_layer_rates: bool = False,
        recorder: Optional[Callable[[str, int, Tensor], None]] = None,
        adaptive_tol: Optional[float] = None,
        adaptive_window: int = 8,
    ) -> SpikingBertOutput:
        """``input_ids`` ``(B, S)`` -> rates of E and each O2 (see :class:`SpikingBertOutput`).

        ``t_conv``/``vth``/``leak`` override the config for this call. ``recorder(key, t0, spikes)``
        is called with every chunk of spikes ``(Tc, B, S, width)`` starting at step ``t0``.
        ``adaptive_tol``: stop before ``t_conv`` once the last layer's [CLS] rate (what the classifier
        reads) moved by less than this over the last ``adaptive_window`` steps, as the mean absolute
        change over the batch and the hidden units, and that layer has fired (evaluation only; checked
        every ``adaptive_window`` steps, one host sync each); ``out.steps`` tells how many steps ran.
        """
        cfg = self.config
        t_conv = cfg.t_conv if t_conv is None else int(t_conv)
        vth = cfg.vth if vth is None else float(vth)
        leak = cfg.leak if leak is None else float(leak)
        if t_conv < 1 or vth <= 0 or not 0 < leak <= 1:
            raise SpikingConfigError(f"need t_conv >= 1, vth > 0, 0 < leak <= 1 (got {t_conv}, {vth}, {leak})")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)

        x = self.embeddings(input_ids, token_type_ids)                                # (B, S, H)
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0         # (B, 1, 1, S)
        bptt = cfg.train_mode == "bptt" and torch.is_grad_enabled()
        implicit = torch.is_grad_enabled() and not bptt
        track_all = output_layer_rates or (implicit and cfg.ide_point == "snn")

        with torch.set_grad_enabled(bptt):
            sim_rates, sim_scores, steps = self._simulate(
                x if bptt else x.detach(), mask, t_conv, vth, leak,
                keep_scores=(output_attentions or bptt) and not implicit,
                track_all=track_all, differentiable=bptt, recorder=recorder,
                adaptive=None if (adaptive_tol is None or torch.is_grad_enabled()) else (adaptive_tol, adaptive_window),
            )
        keys = ["E"] + [f"{k}.O2" for k in range(cfg.num_hidden_layers)]
        out = SpikingBertOutput(rates=tuple(sim_rates[key] for key in keys), attention_scores=tuple(sim_scores), steps=steps)
        if implicit:
            out.rates, out.attention_scores = self._implicit(x, mask, vth, sim_rates, keys, out.solver_info)
        if output_layer_rates:
            out.layer_rates = sim_rates
        return out

    # ---- simulation ----------------------------------------------------------------------------
    def time_chunk(self, t_conv: int, batch: int, seq_len: int) -> int:
        """Steps advanced together per neuron layer (1 for the step schedule or with feedback)."""
        cfg = self.config
        if cfg.schedule == "step" or cfg.feedback:
            return 1
        if cfg.time_chunk is not None:
            return min(cfg.time_chunk, t_conv)
        per_step = batch * seq_len * max(cfg.intermediate_size, cfg.num_attention_heads * seq_len)
        return max(1, min(t_conv, _CHUNK_BUDGET // per_step))

    def _simulate(
        self, x: Tensor, mask: Tensor, t_conv: int, vth: float, leak: float, *,
        keep_scores: bool, track_all: bool, differentiable: bool,
        recorder: Optional[Callable[[str, int, Tensor], None]],
        adaptive: Optional[tuple[float, int]] = None,
    ) -> tuple[dict[str, Tensor], list[Tensor], int]:
        """Run up to ``t_conv`` steps; returns rates keyed by neuron layer, time-averaged scores (if kept)
        and the number of steps run (``t_conv`` unless ``adaptive = (tol, window)`` stopped it early)."""
        cfg = self.config
        chunk = self.time_chunk(t_conv, x.shape[0], x.shape[1])
        if adaptive is not None:                       # chunks that end on every window boundary
            chunk = min(chunk, adaptive[1])
            while adaptive[1] % chunk:
                chunk -= 1
        last_key = f"{cfg.num_hidden_layers - 1}.O2"
        previous_cls: Optional[Tensor] = None
        membranes: dict[str, Tensor] = {}
        counts: dict[str, Tensor] = {}
        clock = {"t0": 0}

        def scan_for(prefix: str):
            def scan(name: str, currents: Tensor) -> Tensor:      # currents (Tc, B, S, width)
                key = prefix + name
                u = membranes.get(key)
                if u is None:                                      # membranes at least float32
                    u = currents.new_zeros(currents.shape[1:], dtype=torch.promote_types(currents.dtype, torch.float32))
                if differentiable:
                    spikes, u = if_scan_surrogate(currents, u, vth, leak, cfg.surrogate, cfg.surrogate_alpha)
                else:
                    spikes, u = if_scan(currents, u, vth, leak)
                membranes[key] = u
                if track_all or name in ("E", "O2"):
                    total = spikes.sum(0)
                    counts[key] = total if key not in counts else counts[key] + total
                if recorder is not None:
                    recorder(key, clock["t0"], spikes)
                return spikes
            return scan

        scan_e = scan_for("")
        scans = [scan_for(f"{k}.") for k in range(cfg.num_hidden_layers)]
        score_sums: list[Optional[Tensor]] = [None] * cfg.num_hidden_layers
        s_last = torch.zeros_like(x)
        for t0 in range(0, t_conv, chunk):
            clock["t0"] = t0
            tc = min(chunk, t_conv - t0)
            if self.feedback is None:
                current_e = x.expand(tc, *x.shape)                           # (Tc, B, S, H)
            else:                                                            # tc == 1: last step's output
                current_e = (x + self.feedback(s_last)).unsqueeze(0)
            s = scan_e("E", current_e)
            for k, layer in enumerate(self.encoder.layer):
                s, scores = layer.simulate(s, mask, scans[k], keep_scores)
                if keep_scores:
                    score_sums[k] = scores if score_sums[k] is None else score_sums[k] + scores
            s_last = s[-1]
            steps = t0 + tc
            if adaptive is not None and steps % adaptive[1] == 0:
                cls_rate = counts[last_key][:, 0] / steps                     # (B, H)
                if previous_cls is not None:
                    change = (cls_rate - previous_cls).abs().mean()           # mean over the batch and H
                    if bool((change < adaptive[0]) & (previous_cls.sum() > 0)):
                        break
                previous_cls = cls_rate
        rates = {key: count / steps for key, count in counts.items()}
        mean_scores = [s / steps for s in score_sums] if keep_scores else []
        return rates, mean_scores, steps

    # ---- implicit differentiation ---------------------------------------------------------------
    def equivalent(
        self, x: Tensor, mask: Tensor, vth: float, snn_rates: Optional[dict[str, Tensor]] = None,
        z_feedback: Optional[Tensor] = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Equivalent rate network (SPEC §1.3) from the embedding current ``x`` ``(B, S, H)``.

        With ``snn_rates`` (the ``snn`` IDE point) every layer's output takes the simulated rate as
        its value while its gradient goes through the layer's own function. ``z_feedback``
        ``(B, S, H)`` is the last O2 rate fed back into E. Returns the rates of E and each O2
        and the per-layer attention scores ``(B, nh, S, S)``.
        """
        def activate(key: str, current: Tensor) -> Tensor:
            a = torch.clamp(current / vth, 0.0, 1.0)
            return a if snn_rates is None else replace(snn_rates[key], a)

        current_e = x if z_feedback is None else x + self.feedback(z_feedback)
        a = activate("E", current_e)
        rates, scores = [a], []
        for k, layer in enumerate(self.encoder.layer):
            a, sc = layer.equivalent(a, mask, lambda name, c, k=k: activate(f"{k}.{name}", c))
            rates.append(a)
            scores.append(sc)
        return rates, scores

    def _implicit(
        self, x: Tensor, mask: Tensor, vth: float, sim_rates: dict[str, Tensor], keys: list[str],
        solver_info: list[SolverInfo],
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Rates with the simulated values and the equivalent network's gradients (SPEC §2)."""
        cfg = self.config
        snn = sim_rates if cfg.ide_point == "snn" else None
        z = None
        if self.feedback is not None:
            def f(z_in: Tensor) -> Tensor:
                return self.equivalent(x, mask, vth, snn, z_feedback=z_in)[0][-1]

            z = implicit_reattach(f, sim_rates[keys[-1]], cfg.solver, cfg.solver_max_iter, cfg.solver_tol, solver_info)
        rates, scores = self.equivalent(x, mask, vth, snn, z_feedback=z)
        return tuple(replace(sim_rates[key], r) for key, r in zip(keys, rates)), tuple(scores)


# ---- heads -----------------------------------------------------------------------------------------
class SpikingBertPreTrainedModel(nn.Module):
    """Weight initialisation and model directories (``save_pretrained`` / ``from_pretrained``)."""

    #: Keys a checkpoint may lack (they are initialised and reported).
    _optional_keys: tuple[str, ...] = ()
    #: Keys of other heads that are dropped (and reported) when a checkpoint has them.
    _ignored_keys: tuple[str, ...] = ("classifier.", "pooler.")

    def __init__(self, config: SpikingBertConfig):
        super().__init__()
        self.config = config
        self.vocab_file: Optional[Path] = None

    def init_weights(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def save_pretrained(self, directory: str | os.PathLike, vocab_file: Optional[str | os.PathLike] = None) -> None:
        """Write ``config.json``, ``model.safetensors`` and ``vocab.txt`` (when known), each atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        self.config.extra["architectures"] = [type(self).__name__]
        self.config.save_pretrained(directory)
        vocab = Path(vocab_file) if vocab_file is not None else self.vocab_file
        if vocab is not None and vocab.resolve() != (directory / VOCAB_NAME).resolve():
            atomic_write(directory / VOCAB_NAME, lambda tmp: shutil.copyfile(vocab, tmp))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides):
        """Load a student directory (or URL/archive). A directory with only ``config.json`` gives a new,
        randomly initialised student. ``overrides`` replace config fields (``num_labels``, ``t_conv``, …)."""
        directory = Path(_resolve(path))
        if not directory.is_dir():
            raise SpikingConfigError(f"{path}: not a student directory (expected config.json and weights)")
        config = SpikingBertConfig.from_pretrained(directory, **overrides)
        model = cls(config)
        vocab = directory / VOCAB_NAME
        model.vocab_file = vocab if vocab.is_file() else None
        weights = _find_weights(directory)
        if weights is None:
            logger.info("%s has no weights: initialised a new student", directory)
            return model
        model.load_checkpoint(load_state_dict_file(weights), str(weights))
        return model

    def load_checkpoint(self, state: dict[str, Tensor], source: str) -> None:
        """Load ``state`` strictly, except for this head's optional keys and other heads' keys."""
        if any(k.startswith("network_x.") for k in state):
            raise SpikingConfigError(
                f"{source} was written by the published SpikingBERT code; convert it first with "
                f"`python -m models.convert_published --checkpoint {source} --config CONFIG_DIR --output_dir OUT`")
        own = self.state_dict()
        ignored = sorted(k for k in state if k not in own and k.startswith(self._ignored_keys + ("bert.feedback.",)))
        unexpected = sorted(k for k in state if k not in own and k not in ignored)
        missing = sorted(k for k in own if k not in state)
        initialised = [k for k in missing if k.startswith(self._optional_keys + ("bert.feedback.",))]
        missing = [k for k in missing if k not in initialised]
        if missing or unexpected:
            raise SpikingConfigError(
                f"{source} does not match this student: missing {missing[:8]}, unexpected {unexpected[:8]} "
                f"(check that config.json belongs to these weights)")
        for k, v in state.items():
            if k in own and own[k].shape != v.shape:
                raise SpikingConfigError(
                    f"{source}: {k} has shape {tuple(v.shape)} but the config gives {tuple(own[k].shape)} "
                    f"(e.g. a different num_labels or hidden size)")
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        if initialised:
            logger.info("initialised %s (not in %s)", initialised, source)
        if ignored:
            logger.info("ignored %s from %s", ignored, source)


class SpikingBertForDistillation(SpikingBertPreTrainedModel):
    """General-KD student: rates projected to the teacher's width by one shared ``fit_dense``."""

    def __init__(self, config: SpikingBertConfig):
        super().__init__(config)
        self.bert = SpikingBertModel(config)
        self.fit_dense = Linear(config.hidden_size, config.fit_size)
        self.init_weights()

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, **kwargs) -> SpikingBertOutput:
        out = self.bert(input_ids, token_type_ids, attention_mask, **kwargs)
        out.reps = tuple(self.fit_dense(r) for r in out.rates)
        return out


class SpikingBertForSequenceClassification(SpikingBertPreTrainedModel):
    """Task student: ``logits = classifier(relu(a_O2(L)[:, 0]))`` (optionally through a tanh pooler)."""

    _optional_keys = ("classifier.", "pooler.")
    _ignored_keys = ()

    def __init__(self, config: SpikingBertConfig):
        super().__init__(config)
        self.bert = SpikingBertModel(config)
        self.fit_dense = Linear(config.hidden_size, config.fit_size)
        self.pooler = Linear(config.hidden_size, config.hidden_size) if config.use_pooler else None
        self.classifier = Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, **kwargs) -> SpikingBertOutput:
        out = self.bert(input_ids, token_type_ids, attention_mask, **kwargs)
        out.reps = tuple(self.fit_dense(r) for r in out.rates)
        out.logits = self.head(out.rates[-1][:, 0])
        return out

    def head(self, cls_rate: Tensor) -> Tensor:
        """Logits ``(B, num_labels)`` from the last layer's [CLS] rate ``(B, H)``."""
        pooled = torch.tanh(self.pooler(cls_rate)) if self.pooler is not None else torch.relu(cls_rate)
        return self.classifier(pooled)


# ---- files --------------------------------------------------------------------------------------------
def _resolve(path: str | os.PathLike) -> str:
    """Local paths as they are; URLs, ``s3://`` and archives through the shared download cache."""
    text = str(path)
    return str(cached_path(text)) if "://" in text else text


def _find_weights(directory: Path) -> Optional[Path]:
    for name in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME):
        if (directory / name).is_file():
            return directory / name
    return None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a safetensors file, or a ``.bin`` with ``weights_only=True`` (never unpickles code)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SpikingConfigError(f"{path}: no such file") from None
    except Exception as e:  # truncated/corrupt files, pickled code refused by weights_only
        raise SpikingConfigError(f"{path}: cannot be read as a weights file ({describe_load_error(e)}); "
                                 f"it may be truncated or not a plain tensor checkpoint") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SpikingConfigError(f"{path}: expected a flat dict of tensors")
    return dict(state)
