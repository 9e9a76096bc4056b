"""The paper recipe's time, measured before it runs (``python -m apps.paper``; ``--estimate`` stops after it).

Each stage's own command runs briefly into ``OUTPUT_DIR/estimate/<stage>/`` (`apps.demo_stages`, so a
re-run reuses the measurements), on the real data and models, changed only where the measurement needs it:

* training stages: ``--max_steps`` 1 + ``--estimate_steps`` with ``--logging_steps 1``; the time per
  optimizer step is the mean over the steps after the first (warm-up) one, from ``metrics.jsonl``, and the
  whole stage's steps are those the trainer will run (`TrainerConfig.total_steps`: the training set's size,
  batch size and epochs; general KD: the pregenerated epochs' sizes);
* the dev set cut to two evaluation batches (``estimate/data/``): the evaluation stage's dev pass and
  report pass per example, times the whole dev set; prediction KD adds one dev pass per evaluation it makes
  (`TrainerConfig.evaluations`);
* ``--corpus``: the first `SAMPLE_BYTES` of the corpus (up to a document's end) are pregenerated; the time
  (from the stage's first to its last log line) and the instances scale with the corpus size;
* each stage's start-up (loading the models, tokenizing the training set, the teacher's dev score on the
  cut dev set) is the short run's wall time minus its steps and evaluations.

The estimate is printed per stage (steps, seconds per step, evaluations, start-up, total) with the
device it was measured on, and written to ``OUTPUT_DIR/estimate.json``.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from spikingbert.core.files import atomic_write, atomic_write_json, read_json, read_json_lines

from .demo_stages import REPO, StageRun, repo_relative, reused_stages, run_stages
from .paper import TRAINING, Inputs, PaperRecipe, Step

__all__ = ["SAMPLE_BYTES", "DEV_SAMPLE_BATCHES", "measure_and_estimate", "format_estimate", "duration"]

#: Bytes of the corpus pregenerated to time ``--corpus`` (extended to the end of the document).
SAMPLE_BYTES = 1_000_000
#: Evaluation batches in the cut dev set of the measurements.
DEV_SAMPLE_BATCHES = 2
_STAMP = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.M)


def measure_and_estimate(recipe: PaperRecipe, inputs: Inputs, steps: Sequence[Step], root: Path, extra_steps: int,
                         verbose: bool) -> Dict[str, Any]:
    """Run the measurements (reused when they finished earlier), print the estimate, write ``estimate.json``."""
    estimate_root = root / "estimate"
    measured, scale = _measurement_steps(recipe, inputs, steps, repo_relative(estimate_root), extra_steps)
    print(f"Measuring the recipe's time ({extra_steps} optimizer steps per training stage after a warm-up step; "
          f"{estimate_root}):", flush=True)
    runs = {run.name: run for run in run_stages([s.stage() for s in measured], estimate_root, verbose)}
    for step in measured:
        for checkpoint in (REPO / step.output_dir).glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)           # only the timings are needed
    estimate = compute_estimate(inputs, steps, {s.name: s for s in measured}, runs, scale)
    finished = [s.name for s in steps][:reused_stages([s.stage() for s in steps], root)]
    estimate["finished_earlier"] = finished
    atomic_write_json(root / "estimate.json", estimate)
    print("\n" + format_estimate(estimate) + "\n", flush=True)
    return estimate


def _measurement_steps(r: PaperRecipe, i: Inputs, steps: Sequence[Step], est: Path, extra_steps: int
                       ) -> Tuple[List[Step], float]:
    """The measurement stages (see the module docstring) and the corpus's size over its sample's (1 without)."""
    by_name = {s.name: s for s in steps}
    short = {"max_steps": extra_steps + 1, "logging_steps": 1, "save_steps": 0, "save_total_limit": 1,
             "cache_dir": est / "cache"}
    data = _sample_task_dir(i, r, est / "data")
    measured, scale, pregenerated, student = [], 1.0, i.pregenerated, i.general_student
    if "pregenerate" in by_name:
        corpus, scale = _sample_corpus(REPO / i.corpus, est / "corpus_sample.txt")
        pregenerated = est / "pregenerated"
        step = by_name["pregenerate"].with_flags(train_corpus=corpus, output_dir=pregenerated)
        measured.append(dataclasses.replace(step, outputs=[pregenerated / p.name for p in step.outputs],
                                            settings={"corpus": {"sample_of": str(i.corpus), "scale": scale}}))
    if "general" in by_name:
        student = est / "general"
        general = {k: v for k, v in short.items() if k != "cache_dir"}
        measured.append(_retarget(by_name["general"].with_flags(pregenerated_data=pregenerated, **general), student))
    for name in ("ikd", "pred"):
        step = by_name[name].with_flags(spiking_student_model=student, data_dir=data, **short)
        student = est / name
        measured.append(_retarget(step, student))
    evaluation = by_name["eval"].with_flags(spiking_student_model=student, data_dir=data, cache_dir=est / "cache")
    measured.append(_retarget(evaluation, est / "eval"))
    return measured, scale


def _retarget(step: Step, directory: Path) -> Step:
    """``step`` writing into ``directory`` (its expected outputs moved along)."""
    old = step.output_dir
    return dataclasses.replace(step.with_flags(output_dir=directory),
                               outputs=[directory / p.relative_to(old) for p in step.outputs])


def _sample_task_dir(i: Inputs, r: PaperRecipe, directory: Path) -> Path:
    """The task's directory with its dev split(s) cut to `DEV_SAMPLE_BATCHES` evaluation batches (every other file
    linked to the original)."""
    from spikingbert.data import glue

    processor = glue.get_processor(i.task)
    source_dir, target = REPO / i.task_dir, REPO / directory / Path(i.task_dir).name
    target.mkdir(parents=True, exist_ok=True)
    dev_files = {name for split, name in processor.split_files.items() if split.startswith("dev")}
    rows = DEV_SAMPLE_BATCHES * r.eval_batch_size + (1 if processor.header_names else 0)
    for source in sorted(source_dir.iterdir()):
        link = target / source.name
        if source.name in dev_files:
            with open(source, "rb") as f:
                data = b"".join(islice(f, rows))
            if not link.is_file() or link.is_symlink() or link.read_bytes() != data:
                link.unlink(missing_ok=True)
                atomic_write(link, lambda tmp, data=data: tmp.write_bytes(data))
        elif not link.exists():
            link.unlink(missing_ok=True)                                     # a dangling link
            link.symlink_to(source.resolve())
    return directory / target.name


def _sample_corpus(corpus: Path, target: Path) -> Tuple[Path, float]:
    """The corpus's first `SAMPLE_BYTES` up to the end of a document (a blank line) into ``target``; returns it and
    the corpus's size over the sample's."""
    with open(corpus, "rb") as f:
        data = f.read(SAMPLE_BYTES)
        if len(data) == SAMPLE_BYTES and not data.endswith(b"\n\n"):
            for line in f:
                data += line
                if not line.strip():
                    break
    path = REPO / target
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_bytes() != data:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return target, corpus.stat().st_size / max(len(data), 1)


# ------------------------------------------------------------------------------------------ the estimate

def compute_estimate(i: Inputs, steps: Sequence[Step], measured: Dict[str, Step], runs: Dict[str, StageRun],
                     scale: float) -> Dict[str, Any]:
    """The estimate of every stage of ``steps`` from the measurements (see the module docstring)."""
    from spikingbert.evaluation.dev import dev_splits

    dev = {split: _count_rows(i, split) for split in dev_splits(i.task)}
    evaluation = _evaluation_rates(measured["eval"], runs["eval"])
    dev_pass = evaluation["dev_pass_per_example"] * sum(dev.values())
    stages = []
    for step in steps:
        if step.name == "pregenerate":
            stages.append(_pregenerate_estimate(measured[step.name], runs[step.name], scale))
        elif step.name in TRAINING:
            examples = _examples_in_epoch(i, step, measured, scale)
            stages.append(_training_estimate(step, measured[step.name], runs[step.name], examples, dev_pass,
                                             evaluation["dev_pass_per_example"] * evaluation["examples"]))
        else:
            report = evaluation["report_per_example"] * dev["dev"]
            stages.append(_entry("eval", evaluation["startup"], evaluations=1, seconds_per_evaluation=dev_pass + report,
                                 basis=f"one dev pass and the report pass over {sum(dev.values())} examples"))
    return {"device": _device(measured), "dev_examples": dev, "stages": stages,
            "total_seconds": round(sum(s["seconds"] for s in stages), 1),
            "measured_steps": next((int(s.flags["max_steps"]) - 1 for s in measured.values() if s.name in TRAINING), 0)}


def _entry(name: str, startup: float, steps: Optional[int] = None, seconds_per_step: Optional[float] = None,
           evaluations: int = 0, seconds_per_evaluation: Optional[float] = None, basis: str = "",
           seconds: Optional[float] = None) -> Dict[str, Any]:
    if seconds is None:
        seconds = startup + (steps or 0) * (seconds_per_step or 0) + evaluations * (seconds_per_evaluation or 0)
    return {"stage": name, "steps": steps, "seconds_per_step": seconds_per_step, "evaluations": evaluations,
            "seconds_per_evaluation": seconds_per_evaluation, "startup_seconds": round(startup, 1),
            "seconds": round(seconds, 1), "basis": basis}


def _training_estimate(step: Step, measured: Step, run: StageRun, examples_in_epoch: Callable[[int], int],
                       dev_pass: float, sample_dev_pass: float) -> Dict[str, Any]:
    """A training stage: its steps x the measured time per step, its dev evaluations, its start-up."""
    from spikingbert.training.stage import TrainerConfig

    records = [r for r in read_json_lines(REPO / measured.output_dir / "metrics.jsonl") if "steps_per_sec" in r]
    timed = [1.0 / r["steps_per_sec"] for r in records if r["step"] >= 2 and r["steps_per_sec"] > 0]
    if not timed:
        raise RuntimeError(f"{measured.output_dir}/metrics.jsonl holds no timed step after the warm-up step")
    per_step = sum(timed) / len(timed)
    config = TrainerConfig(output_dir=Path("."), train_batch_size=int(step.flags["train_batch_size"]),
                           num_train_epochs=float(step.flags["num_train_epochs"]),
                           max_steps=int(step.flags.get("max_steps") or 0),
                           eval_steps=int(step.flags.get("eval_step", 0)) if step.name == "pred" else 0)
    total = config.total_steps(examples_in_epoch)
    evaluations = config.evaluations(examples_in_epoch) if step.name == "pred" else 0
    ran = sum(1.0 / r["steps_per_sec"] for r in records if r["steps_per_sec"] > 0)
    startup = max(run.seconds - ran - (sample_dev_pass if step.name == "pred" else 0.0), 0.0)
    return _entry(step.name, startup, total, round(per_step, 4), evaluations,
                  round(dev_pass, 2) if evaluations else None, basis=f"{len(timed)} timed steps")


def _evaluation_rates(measured: Step, run: StageRun) -> Dict[str, float]:
    """Seconds per example of the dev pass and of the report pass, and the start-up, from the cut dev set."""
    out = REPO / measured.output_dir
    results = read_json(out / "eval_results.json", "eval results")
    report = read_json(out / "report" / "report.json", "report")
    examples, report_examples = max(int(results["examples"]), 1), max(int(report["num_examples"]), 1)
    return {"dev_pass_per_example": float(results["seconds"]) / examples,
            "report_per_example": float(report["seconds"]) / report_examples, "examples": examples,
            "startup": max(run.seconds - float(results["seconds"]) - float(report["seconds"]), 0.0)}


def _pregenerate_estimate(measured: Step, run: StageRun, scale: float) -> Dict[str, Any]:
    """Pregenerating the corpus: the sample's time (first to last log line) times the corpus's size over it."""
    log = REPO / measured.output_dir.parent / "logs" / "pregenerate.log"
    stamps = _STAMP.findall(log.read_bytes()) if log.is_file() else []
    seconds = run.seconds
    if len(stamps) >= 2:
        first, last = (datetime.strptime(s.decode(), "%Y-%m-%d %H:%M:%S,%f") for s in (stamps[0], stamps[-1]))
        seconds = (last - first).total_seconds()
    return _entry("pregenerate", 0.0, seconds=seconds * scale,
                  basis=f"a sample of the corpus, scaled x{scale:.4g}" if scale != 1 else "the whole corpus")


def _examples_in_epoch(i: Inputs, step: Step, measured: Dict[str, Step], scale: float) -> Callable[[int], int]:
    """Training examples of epoch ``e`` of a training stage: the task's training set, or general KD's pregenerated
    epochs (from ``--corpus``: the sample's, scaled)."""
    if step.name != "general":
        count = _count_rows(i, "train")
        return lambda epoch: count
    from spikingbert.data.pregenerated import count_data_epochs, read_epoch_metrics
    from spikingbert.data.pretraining import epoch_paths

    directory = REPO / Path(measured["general"].flags["pregenerated_data"])
    counts = [round(read_epoch_metrics(epoch_paths(directory, e)[1])[0] * scale)
              for e in range(count_data_epochs(directory))]
    return lambda epoch: counts[epoch % len(counts)]


def _count_rows(i: Inputs, split: str) -> int:
    from spikingbert.data import glue

    return len(glue.get_processor(i.task).read_split(REPO / i.task_dir, split)[0])


def _device(measured: Dict[str, Step]) -> str:
    """The device the measurements ran on, in words (from a training stage's ``args.json``)."""
    step = next(s for s in measured.values() if s.name in TRAINING)
    args = read_json(REPO / step.output_dir / "args.json", "args.json")
    device, gpus = str(args.get("device", "cpu")), int(args.get("n_gpu") or 0)
    if device.startswith("cuda"):
        import torch

        return f"{device}: {gpus} x {torch.cuda.get_device_name(0)}"
    from spikingbert.runtime import cpu_name

    return f"cpu: {cpu_name()}, {os.cpu_count()} logical cores"


def duration(seconds: float) -> str:
    """``H:MM:SS``, with days in front from a day on (``2 d 03:04:05``)."""
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days} d {hours:02d}:{rest // 60:02d}:{rest % 60:02d}" if days else text


def format_estimate(estimate: Dict[str, Any]) -> str:
    """The estimate as a table: per stage its steps, seconds per step, evaluations, start-up and total."""
    head = ("stage", "steps", "s/step", "dev evals", "s/eval", "start-up s", "estimate")
    rows = [head]
    for s in estimate["stages"]:
        rows.append((s["stage"], _cell(s["steps"], "{:,}"), _cell(s["seconds_per_step"], "{:.3f}"),
                     _cell(s["evaluations"] or None, "{:,}"), _cell(s["seconds_per_evaluation"], "{:.1f}"),
                     f"{s['startup_seconds']:.1f}", duration(s["seconds"])))
    rows.append(("total", "", "", "", "", "", duration(estimate["total_seconds"])))
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = [f"Time estimate of the recipe, measured on {estimate['device']}:"]
    lines += ["  " + "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths)))
              for r in rows]
    for s in estimate["stages"]:
        if s["basis"]:
            lines.append(f"  {s['stage']}: {s['basis']}")
    done = estimate.get("finished_earlier") or []
    if done:
        left = sum(s["seconds"] for s in estimate["stages"] if s["stage"] not in done)
        lines.append(f"  finished earlier: {', '.join(done)}; left to run: {duration(left)}")
    return "\n".join(lines)


def _cell(value: Any, form: str) -> str:
    return "-" if value is None else form.format(value)
