"""SpikingBERT student network, readable top-down.

* :class:`SpikingBertModel` — the chain of neuron layers E, then K, V, A, O1, I, O2
  per encoder layer; simulates ``T`` steps and, when gradients are wanted,
  evaluates the equivalent rate network (implicit differentiation) or unrolls
  the simulation with a surrogate gradient (BPTT baseline).
* :class:`SpikingBertForDistillation` — the ``fit_dense`` projection to the teacher's width;
  :class:`SpikingBertForSequenceClassification` adds the classifier on top of it, and ``predict`` (label
  names and class probabilities of raw texts, :mod:`models.inference`).

The configuration is :class:`models.configuration.SpikingBertConfig`; model directories are
:class:`core.pretrained.PreTrainedModel`'s (:class:`SpikingBertPreTrainedModel` says what differs for a
student), the blocks are in :mod:`modules.blocks`.

Simulation schedule: the network is feed-forward in space, so each neuron
layer can be advanced over a whole chunk of steps at once (time folded into the
GEMM rows); only the elementwise membrane update is sequential in ``t``.
``schedule="step"`` advances one step at a time through all layers (the textbook
order). Both give the same spikes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from spikingbert.core.errors import UsageError
from spikingbert.core.linear import Linear
from spikingbert.core.pretrained import PreTrainedModel
from spikingbert.core.settings import check_setting
from spikingbert.modules.blocks import SpikingBertEmbeddings, SpikingBertEncoder
from spikingbert.modules.implicit import implicit_reattach, replace
from spikingbert.modules.neuron import NeuronLayers, rate
from spikingbert.modules.solvers import SolverInfo

from .configuration import SpikingBertConfig
from .inference import Prediction, predict
from .stopping import StopRule, StopTracker

#: Elements of the largest per-chunk current tensor the fast schedule aims for (bounds eval memory).
_CHUNK_BUDGET = 1 << 22


@dataclass
class SpikingBertModelOutput:
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
        steps: simulation steps that ran (``t_conv`` unless adaptive stopping ended every example early).
        example_steps: ``(B,)`` the steps each example used: its stop step with adaptive stopping (its
            ``logits`` are those of that step), else ``steps``; None for the distillation student.
    """

    rates: tuple[Tensor, ...]
    attention_scores: tuple[Tensor, ...] = ()
    reps: tuple[Tensor, ...] = ()
    logits: Optional[Tensor] = None
    layer_rates: Optional[dict[str, Tensor]] = None
    solver_info: list[SolverInfo] = field(default_factory=list)
    steps: int = 0
    example_steps: Optional[Tensor] = None


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
        stop: Optional[Callable[[int, Tensor], bool]] = None,
    ) -> SpikingBertModelOutput:
        """``input_ids`` ``(B, S)`` -> rates of E and each O2 (see :class:`SpikingBertModelOutput`).

        ``t_conv``/``vth``/``leak`` override the config for this call. ``recorder(key, t0, spikes)``
        is called with every chunk of spikes ``(Tc, B, S, width)`` starting at step ``t0``.
        ``stop(t0, cls_spikes)`` (evaluation only) is called with the last layer's [CLS] spikes ``(Tc, B, H)`` of
        every chunk starting at step ``t0``; the simulation ends before ``t_conv`` once it returns True (adaptive
        stopping, `models.stopping.StopTracker`); ``out.steps`` tells how many steps ran.
        """
        cfg = self.config
        t_conv = cfg.t_conv if t_conv is None else int(t_conv)
        vth = cfg.vth if vth is None else float(vth)
        leak = cfg.leak if leak is None else float(leak)
        for name, value in (("t_conv", t_conv), ("vth", vth), ("leak", leak)):
            check_setting(name, value)
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
            neurons = NeuronLayers(vth, leak, count=lambda key: track_all or key == "E" or key.endswith(".O2"),
                                   recorder=recorder, surrogate=(cfg.surrogate, cfg.surrogate_alpha) if bptt else None)
            sim_scores, steps = self._simulate(x if bptt else x.detach(), mask, t_conv, neurons,
                                               keep_scores=(output_attentions or bptt) and not implicit,
                                               stop=None if torch.is_grad_enabled() else stop)
            sim_rates = neurons.rates(steps)
        keys = ["E"] + [f"{k}.O2" for k in range(cfg.num_hidden_layers)]
        out = SpikingBertModelOutput(rates=tuple(sim_rates[key] for key in keys), attention_scores=tuple(sim_scores),
                                     steps=steps)
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

    def _simulate(self, x: Tensor, mask: Tensor, t_conv: int, neurons: NeuronLayers, *, keep_scores: bool,
                  stop: Optional[Callable[[int, Tensor], bool]]) -> tuple[list[Tensor], int]:
        """Run up to ``t_conv`` steps through ``neurons``; returns the time-averaged scores (if kept) and the
        number of steps run (``t_conv`` unless ``stop`` ended it early)."""
        chunk = self.time_chunk(t_conv, x.shape[0], x.shape[1])
        scans = [lambda name, c, k=k: neurons.scan(f"{k}.{name}", c) for k in range(len(self.encoder.layer))]
        score_sums: list[Optional[Tensor]] = [None] * len(self.encoder.layer)
        s_last = torch.zeros_like(x)
        for t0 in range(0, t_conv, chunk):
            neurons.t0 = t0
            tc = min(chunk, t_conv - t0)
            if self.feedback is None:
                current_e = x.expand(tc, *x.shape)                           # (Tc, B, S, H)
            else:                                                            # tc == 1: last step's output
                current_e = (x + self.feedback(s_last)).unsqueeze(0)
            s = neurons.scan("E", current_e)
            for k, layer in enumerate(self.encoder.layer):
                s, scores = layer.simulate(s, mask, scans[k], keep_scores)
                if keep_scores:
                    score_sums[k] = scores if score_sums[k] is None else score_sums[k] + scores
            s_last = s[-1]
            steps = t0 + tc
            if stop is not None and stop(t0, s[:, :, 0]):
                break
        return ([s / steps for s in score_sums] if keep_scores else []), steps

    # ---- implicit differentiation ---------------------------------------------------------------
    def equivalent(
        self, x: Tensor, mask: Tensor, vth: float, snn_rates: Optional[dict[str, Tensor]] = None,
        z_feedback: Optional[Tensor] = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Equivalent rate network from the embedding current ``x`` ``(B, S, H)``.

        With ``snn_rates`` (the ``snn`` IDE point) every layer's output takes the simulated rate as
        its value while its gradient goes through the layer's own function. ``z_feedback``
        ``(B, S, H)`` is the last O2 rate fed back into E. Returns the rates of E and each O2
        and the per-layer attention scores ``(B, nh, S, S)``.
        """
        def activate(key: str, current: Tensor) -> Tensor:
            a = rate(current, vth)
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
        """Rates with the simulated values and the equivalent network's gradients."""
        cfg = self.config
        snn = sim_rates if cfg.ide_point == "snn" else None
        z = None
        if self.feedback is not None:
            def f(z_in: Tensor) -> Tensor:
                return self.equivalent(x, mask, vth, snn, z_feedback=z_in)[0][-1]

            z = implicit_reattach(f, sim_rates[keys[-1]], cfg.solver, cfg.solver_max_iter, cfg.solver_tol, solver_info)
        rates, scores = self.equivalent(x, mask, vth, snn, z_feedback=z)
        return tuple(replace(sim_rates[key], r) for key, r in zip(keys, rates)), tuple(scores)


# ---- model directories and heads -------------------------------------------------------------------
class SpikingBertPreTrainedModel(PreTrainedModel):
    """A student's model directories (`core.pretrained.PreTrainedModel`): a directory with only ``config.json`` is a
    new, randomly initialised student; the weights must match the config key by key (a head's own keys and the
    feedback connection may be missing; other heads' keys are dropped); a checkpoint of the published code is
    refused with the command that converts it."""

    config_class = SpikingBertConfig
    weights_optional = True
    optional_prefixes = ("bert.feedback.",)
    ignored_prefixes = ("classifier.", "pooler.", "bert.feedback.")

    def check_checkpoint(self, state: Mapping[str, Tensor], source: Path) -> None:
        if any(k.startswith("network_x.") for k in state):
            raise UsageError(
                f"{source} was written by the published SpikingBERT code; convert it first with "
                f"`python -m apps.convert_published --checkpoint {source} --config CONFIG_DIR --output_dir OUT`")


class SpikingBertForDistillation(SpikingBertPreTrainedModel):
    """General-KD student: rates projected to the teacher's width by one shared ``fit_dense``."""

    def __init__(self, config: SpikingBertConfig):
        super().__init__(config)
        self.bert = SpikingBertModel(config)
        self.fit_dense = Linear(config.hidden_size, config.fit_size)
        self.add_head(config)
        self.init_weights()

    def add_head(self, config: SpikingBertConfig) -> None:
        """Modules a subclass puts on top of ``bert`` and ``fit_dense`` (before the weights are initialised)."""

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, **kwargs) -> SpikingBertModelOutput:
        out = self.bert(input_ids, token_type_ids, attention_mask, **kwargs)
        out.reps = tuple(self.fit_dense(r) for r in out.rates)
        return out


class SpikingBertForSequenceClassification(SpikingBertForDistillation):
    """Task student: ``logits = classifier(relu(a_O2(L)[:, 0]))`` (optionally through a tanh pooler)."""

    optional_prefixes = ("classifier.", "pooler.", "bert.feedback.")
    ignored_prefixes = ("bert.feedback.",)

    def add_head(self, config: SpikingBertConfig) -> None:
        self.pooler = Linear(config.hidden_size, config.hidden_size) if config.use_pooler else None
        self.classifier = Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, adaptive: Optional[StopRule] = None,
                **kwargs) -> SpikingBertModelOutput:
        """The distillation student's outputs and the ``logits``. ``adaptive`` (evaluation only): each example
        stops once its prediction settles (`models.stopping`); its ``logits`` are those of its stop step, and
        ``example_steps`` tells which step that was."""
        tracker = None
        if adaptive is not None and not torch.is_grad_enabled():
            t_conv = kwargs.get("t_conv") or self.config.t_conv
            tracker = StopTracker(adaptive, self.head, int(t_conv))
            kwargs["stop"] = tracker.update
        out = super().forward(input_ids, token_type_ids, attention_mask, **kwargs)
        if tracker is not None:
            out.logits, out.example_steps = tracker.logits, tracker.steps
        else:
            out.logits = self.head(out.rates[-1][:, 0])
            out.example_steps = torch.full((input_ids.shape[0],), out.steps, dtype=torch.long, device=input_ids.device)
        return out

    def predict(self, texts: str | Sequence[str], text_pairs: str | Sequence[str] | None = None,
                **kwargs) -> Prediction | list[Prediction]:
        """Label names and class probabilities of ``texts`` (and ``text_pairs``): a list of `Prediction`, or one for
        one string; tokenized with this student directory's vocabulary and recorded settings; see
        :func:`models.inference.predict` for ``kwargs`` (``batch_size``, ``t_conv``, ``adaptive``, ...)."""
        return predict(self, texts, text_pairs, **kwargs)

    def head(self, cls_rate: Tensor) -> Tensor:
        """Logits ``(B, num_labels)`` from the last layer's [CLS] rate ``(B, H)``."""
        pooled = torch.tanh(self.pooler(cls_rate)) if self.pooler is not None else torch.relu(cls_rate)
        return self.classifier(pooled)
