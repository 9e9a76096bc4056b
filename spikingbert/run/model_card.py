"""The model card (``README.md``) every training stage writes into its output directory, beside the model.

It is made from the directory's own files, so it says what the directory holds, not what a flag asked for:
``config.json`` (the architecture, the simulation settings, the task's labels, the stage that wrote it),
``args.json`` (the command that made it, the teacher) and ``best_results.json`` / ``teacher_results.json``
(the dev metric of the kept model and of its teacher), and how to load and use the model next.
"""
from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional

from spikingbert.core.files import atomic_write_text, read_json

__all__ = ["CARD_NAME", "write_model_card", "model_card"]

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"

#: What each stage's directory is, and the command that takes it next (``{dir}``: the directory).
_STAGES = {
    "general": ("a spiking BERT student after general distillation (intermediate KD on general text); its "
                "classifier is untrained",
                "task intermediate KD: `python spiking_bert_task_distill.py --task_name TASK --data_dir DATA "
                "--teacher_model TEACHER --spiking_student_model {dir} --output_dir OUT`"),
    "intermediate": ("a spiking BERT student after task intermediate distillation (attention and hidden-state "
                     "KD from a fine-tuned teacher); its classifier is untrained",
                     "prediction KD: `python spiking_bert_task_distill.py --pred_distill --task_name TASK "
                     "--data_dir DATA --teacher_model TEACHER --spiking_student_model {dir} --output_dir OUT`"),
    "prediction": ("a spiking BERT classifier trained by prediction distillation (soft cross-entropy to a "
                   "fine-tuned teacher's logits, or the gold labels)",
                   "evaluation: `python spiking_bert_task_distill.py --do_eval --task_name TASK --data_dir DATA "
                   "--spiking_student_model {dir} --output_dir OUT`, or `python -m apps.predict --model {dir} "
                   "--text \"...\"`"),
    "finetune": ("a BERT classifier fine-tuned on the task: a teacher for the spiking student",
                 "distillation: `--teacher_model {dir}` of `spiking_bert_task_distill.py`"),
}


def write_model_card(directory: Path) -> Path:
    """Write ``directory/README.md`` (atomically) from the directory's files; return its path."""
    path = Path(directory) / CARD_NAME
    atomic_write_text(path, model_card(directory))
    logger.info("wrote %s", path)
    return path


def model_card(directory: Path) -> str:
    """The model card's Markdown text for a stage's output ``directory``."""
    directory = Path(directory)
    config = _read(directory / "config.json")
    args = _read(directory / "args.json")
    stage = config.get("training_stage") or args.get("stage") or "finetune"
    what, next_step = _STAGES.get(stage, _STAGES["finetune"])
    task = args.get("task_name") or args.get("task")
    spiking = config.get("model_type") == "spiking_bert"
    title = f"{'SpikingBERT student' if spiking else 'BERT teacher'}" + (f": {task}" if task else "") + f" ({stage})"
    rows = [("what", what), ("stage", stage)]
    if task:
        rows.append(("task", f"{task}" + _labels(config)))
    rows += _architecture(config, spiking) + _results(directory, args)
    if args.get("teacher_model"):
        rows.append(("teacher", f"`{args['teacher_model']}`"))
    lines = [f"# {title}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    if args.get("command_line"):
        lines += ["## The command that made it", "", "```", args["command_line"], "```", ""]
    next_step = next_step.format(dir=shlex.quote(str(directory))).replace("TASK", shlex.quote(task or "TASK")).replace(
        "DATA", shlex.quote(args.get("data_dir") or "DATA"))
    lines += ["## Use it", "", _loading(directory, spiking, stage), "", f"Next step, {next_step}.", ""]
    return "\n".join(lines)


def _read(path: Path) -> Dict[str, Any]:
    return read_json(path, "model file") if path.is_file() else {}


def _labels(config: Dict[str, Any]) -> str:
    id2label = config.get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else []
    if not names or config.get("num_labels") == 1:
        return " (regression)" if config.get("num_labels") == 1 else ""
    return f" (labels: {', '.join(names)})"


def _architecture(config: Dict[str, Any], spiking: bool) -> List[tuple]:
    shape = (f"{config.get('num_hidden_layers')} layers, hidden {config.get('hidden_size')}, "
             f"{config.get('num_attention_heads')} heads, intermediate {config.get('intermediate_size')}, "
             f"max_seq_length {config.get('max_seq_length')}")
    rows = [("architecture", shape)]
    if spiking:
        leak = config.get("leak", 1.0)
        neuron = "IF (integrate-and-fire)" if leak == 1.0 else f"LIF (leaky integrate-and-fire, leak {leak})"
        rows.append(("simulation", f"t_conv {config.get('t_conv')} time steps, vth {config.get('vth')}, {neuron}, "
                                   f"{config.get('train_mode', 'ide')} training"))
    return rows


def _results(directory: Path, args: Dict[str, Any]) -> List[tuple]:
    """The kept model's dev metrics (best_results.json) and the teacher's (teacher_results.json)."""
    rows = []
    best = _read(directory / "best_results.json")
    metrics = {k: v for k, v in best.items() if k not in ("step", "epoch") and isinstance(v, (int, float))}
    if metrics:
        rows.append(("dev metric", f"{_metrics(metrics)} (step {best.get('step')}, `best_results.json`)"))
    teacher = _read(directory / "teacher_results.json")
    teacher_metrics = {k: v for k, v in teacher.items() if k in metrics}
    if teacher_metrics:
        rows.append(("teacher dev metric", _metrics(teacher_metrics)))
    return rows


def _metrics(values: Dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in values.items())


def _loading(directory: Path, spiking: bool, stage: Optional[str]) -> str:
    if not spiking:
        return ("```python\nfrom spikingbert import BertForSequenceClassification\n"
                f"teacher = BertForSequenceClassification.from_pretrained({json.dumps(str(directory))})\n```")
    cls = "SpikingBertForSequenceClassification" if stage != "general" else "SpikingBertForDistillation"
    text = (f"```python\nfrom spikingbert import {cls}\n"
            f"model = {cls}.from_pretrained({json.dumps(str(directory))})   # in eval mode\n")
    if stage == "prediction":
        text += "model.predict(\"a gorgeous, witty film\")                # label, probabilities, time steps\n"
    return text + "```"
