"""The paper's recipe (``python -m apps.paper``): its settings and their sources, the stages' commands, the step and
evaluation counts of `TrainerConfig`, and the whole recipe end to end at a tiny scale (tiny BERT teachers, a tiny
student, a tiny SST-2): ``--estimate`` stopping before training, ``--stop_after``, re-runs that reuse finished
stages, a changed setting re-running from its stage, an interrupted stage continuing from its checkpoint, and
``--summary`` checked against the stage result files."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spikingbert.apps import paper, paper_summary
from spikingbert.core.errors import UsageError
from spikingbert.training.stage import TrainerConfig
from tests.helpers.world import REPO, build_world, read_jsonl, script_env

PUBLISHED_SOURCES = ("published README", "published `", "published scripts' default", "this recipe:")
#: The tiny scale: T 4, 32 tokens, batches of 8 (40 training and 11 dev examples), two steps of general KD and of
#: task IKD, and one epoch of prediction KD (5 steps) evaluated every 2 steps.
TINY = ["--t_conv", "4", "--max_seq_len", "32", "--max_seq_length", "32", "--epochs_to_generate", "1",
        "--general_batch_size", "8", "--ikd_batch_size", "8", "--pred_batch_size", "8", "--eval_batch_size", "8",
        "--general_max_steps", "2", "--ikd_max_steps", "2", "--pred_epochs", "1", "--eval_step", "2",
        "--estimate_steps", "1"]
#: Prediction KD at that scale, counted by hand: 40 examples / 8 = 5 steps in its one epoch; evaluations after
#: steps 2 and 4 (every 2) and 5 (the epoch's end, the last step).
PRED_STEPS, PRED_EVALUATIONS = 5, 3
STAGES = ("pregenerate", "general", "ikd", "pred", "eval")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("paper_world"))


def _inputs(world, output: Path, *extra: str) -> list:
    return ["--task", "SST-2", "--glue_dir", str(world.root), "--bert_base", str(world.teacher_general),
            "--teacher", str(world.teacher_sst2), "--corpus", str(world.corpus), "--student_config",
            str(world.student_config), "--output_dir", str(output), *extra]


def _paper(*args: str, expect_rc: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "apps.paper", *args], cwd=REPO, env=script_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect_rc, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _reused(stdout: str) -> list:
    """The stages of the recipe proper (not the measurements) a run reused, from its console output."""
    recipe_part = stdout.split("Time estimate of the recipe")[-1]
    return re.findall(r"\] (\w+): .* -- finished earlier", recipe_part)


# ------------------------------------------------------------------------------------------ settings


def test_every_recipe_setting_has_a_documented_source():
    fields = [f.name for f in dataclasses.fields(paper.PaperRecipe)]
    assert set(fields) == set(paper.RECIPE_TABLE) | set(paper.SCALE_HELP)
    for name, (_, what, source) in paper.RECIPE_TABLE.items():
        assert what and source.startswith(PUBLISHED_SOURCES), f"{name}: {source!r}"
    for setting, value, what, source in paper.FIXED_TABLE:
        assert value and what and source.startswith(PUBLISHED_SOURCES), setting
    # The README shows the very table the code holds, and --help shows each source.
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert paper.recipe_table_markdown() in readme
    help_text = " ".join(paper.paper_parser().format_help().split())
    for name, (_, _, source) in paper.RECIPE_TABLE.items():
        assert f"--{name}" in help_text and " ".join(source.split()) in help_text, name


def test_commands_carry_the_published_hyper_parameters(world, tmp_path):
    """The published README's commands (steps 1(b), 1(c), 2, 3, evaluation) with T 125 and V_th 1."""
    args = paper.paper_parser().parse_args(_inputs(world, tmp_path / "run"))
    steps = {s.name: " ".join(s.argv()) for s in paper.build_steps(paper.parse_recipe(args),
                                                                     paper.parse_inputs(args), tmp_path / "run")}
    assert list(steps) == list(STAGES)
    assert "--reduce_memory --do_lower_case --epochs_to_generate 3" in steps["pregenerate"]
    assert "--do_lower_case --train_batch_size 128" in steps["general"]
    assert "--train_batch_size 32 --learning_rate 5e-05 --num_train_epochs 10" in steps["ikd"]
    assert ("--train_batch_size 32 --learning_rate 3e-05 --num_train_epochs 3" in steps["pred"]
            and "--eval_step 100" in steps["pred"] and "--temperature 1" in steps["pred"])
    assert "--do_eval" in steps["eval"] and "--eval_batch_size 32" in steps["eval"]
    for name in STAGES[1:]:
        assert "--t_conv 125 --vth 1" in steps[name] and "--max_steps" not in steps[name]
    for name in ("ikd", "pred", "eval"):
        assert "--max_seq_length 128" in steps[name]
    # A general student made earlier: no general KD, task IKD starts from it.
    given = paper.paper_parser().parse_args(
        [a for a in _inputs(world, tmp_path / "run") if a not in ("--corpus", str(world.corpus))]
        + ["--general_student", str(world.teacher_sst2)])
    skipped = paper.build_steps(paper.PAPER, paper.parse_inputs(given), tmp_path / "run")
    assert [s.name for s in skipped] == ["ikd", "pred", "eval"]
    assert skipped[0].flags["spiking_student_model"] == world.teacher_sst2.resolve()
    # The new student of general KD is the published 4-layer config unless --student_config says otherwise.
    without = [a for a in _inputs(world, tmp_path / "run") if a not in ("--student_config", str(world.student_config))]
    inputs = paper.parse_inputs(paper.paper_parser().parse_args(without))
    assert inputs.student_config == Path("spiking_student_model")
    assert json.loads((REPO / inputs.student_config / "config.json").read_text())["num_hidden_layers"] == 4


def test_user_errors_are_one_clear_message(world, tmp_path):
    def run(*argv):
        return paper.main(list(argv))

    with pytest.raises(UsageError, match="--teacher is required"):
        run("--task", "SST-2", "--glue_dir", str(world.root), "--output_dir", str(tmp_path))
    no_task = [str(tmp_path) if a == str(world.root) else a for a in _inputs(world, tmp_path / "run")]
    with pytest.raises(UsageError, match="SST-2/train.tsv not found"):
        run(*no_task)
    with pytest.raises(UsageError, match="--stop_after pregenerate: this recipe has no such stage"):
        run("--task", "SST-2", "--glue_dir", str(world.root), "--teacher", str(world.teacher_sst2),
            "--general_student", str(world.teacher_sst2), "--output_dir", str(tmp_path), "--stop_after",
            "pregenerate")
    with pytest.raises(UsageError, match="no recipe.json there"):
        run("--summary", str(tmp_path))
    (tmp_path / "recipe.json").write_text("[1]")
    with pytest.raises(UsageError, match="no recipe.json there"):
        run("--summary", str(tmp_path))
    with pytest.raises(UsageError, match="--no_estimate: not allowed with argument --estimate"):
        run(*_inputs(world, tmp_path / "run"), "--estimate", "--no_estimate")


# ------------------------------------------------------------------------------------------ step counts


def test_trainer_config_counts_steps_and_evaluations_as_counted_by_hand():
    config = TrainerConfig(output_dir=Path("."), train_batch_size=8, gradient_accumulation_steps=2,
                           num_train_epochs=2.5, eval_steps=4)
    # micro-batches of 4 (8 / 2): 40 examples -> 10 micro-batches, in groups of 2 -> 5 steps.
    assert config.batches_in_epoch(40) == 10 and config.steps_in_epoch(40) == 5
    # 2.5 epochs: 5 + 5 + ceil(0.5 * 5) = 13 steps.
    assert config.total_steps(lambda epoch: 40) == 13
    # every 4 steps (4, 8, 12), the epoch ends (5, 10) and the last step (13).
    assert config.evaluations(lambda epoch: 40) == 6
    # two processes: 20 examples each, micro-batches of 2 -> 10 micro-batches, 5 steps per epoch.
    assert config.micro_batch_size(2) == 2 and config.steps_in_epoch(40, world_size=2) == 5
    # 37 examples: 10 micro-batches (the last of 1), 5 steps; epochs of different sizes (37, then 9: 3 micro-
    # batches, 2 steps) -> 5 + 2 + ceil(0.5 * 5) = 10 steps; evaluations at 4, 8 (every 4), 5, 7 (epoch ends), 10.
    sizes = [37, 9]
    assert config.total_steps(lambda epoch: sizes[epoch % 2]) == 10
    assert config.evaluations(lambda epoch: sizes[epoch % 2]) == 5
    # max_steps wins over the epochs; evaluations at 4, 8 and the last step 9, the epoch end 5.
    capped = dataclasses.replace(config, max_steps=9)
    assert capped.total_steps(lambda epoch: 40) == 9 and capped.evaluations(lambda epoch: 40) == 4
    # eval_steps 0: only the epoch ends (5, 10) and the last step (13).
    assert dataclasses.replace(config, eval_steps=0).evaluations(lambda epoch: 40) == 3


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def recipe_runs(world, tmp_path_factory):
    """The recipe at the tiny scale into one directory: ``--estimate``, ``--summary`` of it then, ``--stop_after
    ikd``, the rest, a re-run, each run's console output and the stage files' modification times after it."""
    root = tmp_path_factory.mktemp("paper_runs") / "run"
    args = _inputs(world, root, *TINY)
    runs = {}

    def record(name, proc):
        files = {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
        runs[name] = (proc, files)

    record("estimate", _paper(*args, "--estimate"))
    record("summary_unfinished", _paper("--summary", str(root), "--summary_json", str(root.parent / "early.json")))
    record("stop_after", _paper(*args, "--stop_after", "ikd"))
    record("rest", _paper(*args))
    record("rerun", _paper(*args))
    return root, args, runs


@pytest.mark.slow
@pytest.mark.system
def test_estimate_measures_and_stops_before_training(recipe_runs):
    root, _, runs = recipe_runs
    proc, files = runs["estimate"]
    assert "Time estimate of the recipe, measured on cpu" in proc.stdout
    assert not any(f.split("/")[0] in STAGES + ("stages", "pregenerated") for f in files), sorted(files)
    estimate = json.loads((root / "estimate.json").read_text())
    stages = {s["stage"]: s for s in estimate["stages"]}
    assert list(stages) == list(STAGES)
    assert stages["general"]["steps"] == 2 and stages["ikd"]["steps"] == 2
    assert stages["pred"]["steps"] == PRED_STEPS and stages["pred"]["evaluations"] == PRED_EVALUATIONS
    assert estimate["dev_examples"] == {"dev": 11}
    assert estimate["total_seconds"] == pytest.approx(sum(s["seconds"] for s in stages.values()), abs=0.2)
    assert all(s["seconds"] >= 0 for s in stages.values()) and stages["pred"]["seconds_per_step"] > 0
    # Each measured training stage ran 1 warm-up step + --estimate_steps 1.
    for name in ("general", "ikd", "pred"):
        assert max(r["step"] for r in read_jsonl(root / "estimate" / name / "metrics.jsonl")) == 2
    # Unfinished: the summary says so and the next run goes on.
    summary, _ = runs["summary_unfinished"]
    assert re.search(r"^sst-2\s+not finished", summary.stdout, re.M)


@pytest.mark.slow
@pytest.mark.system
def test_stages_run_once_and_are_reused(recipe_runs):
    root, _, runs = recipe_runs
    stop, files = runs["stop_after"]
    assert "stopped after ikd" in stop.stdout and _reused(stop.stdout) == []
    assert "ikd/model.safetensors" in files and not any(f.startswith(("pred/", "eval/")) for f in files)
    # The measurements are reused, not repeated, by every later run.
    assert files["estimate/general/model.safetensors"] == runs["estimate"][1]["estimate/general/model.safetensors"]
    rest, files = runs["rest"]
    assert _reused(rest.stdout) == ["pregenerate", "general", "ikd"]
    assert files["ikd/model.safetensors"] == runs["stop_after"][1]["ikd/model.safetensors"]
    rerun, after = runs["rerun"]
    assert _reused(rerun.stdout) == list(STAGES)
    for name in ("general", "ikd", "pred"):
        assert after[f"{name}/model.safetensors"] == files[f"{name}/model.safetensors"]
    # Prediction KD made the evaluations counted by hand (and by the estimate).
    evaluations = [r for r in read_jsonl(root / "pred" / "metrics.jsonl") if "eval" in r]
    assert [r["step"] for r in evaluations] == [2, 4, 5] and len(evaluations) == PRED_EVALUATIONS
    recipe = json.loads((root / "recipe.json").read_text())
    assert recipe["task"] == "sst-2" and recipe["overridden"]["t_conv"] == 4 and "vth" not in recipe["overridden"]


@pytest.mark.slow
@pytest.mark.system
def test_summary_shows_the_stage_results(recipe_runs, tmp_path):
    root, _, runs = recipe_runs
    results = json.loads((root / "eval" / "eval_results.json").read_text())
    report = json.loads((root / "eval" / "report" / "report.json").read_text())
    proc = _paper("--summary", str(root), "--summary_json", str(tmp_path / "summary.json"))
    row = next(line for line in proc.stdout.splitlines() if line.startswith("sst-2"))
    energy = results["energy_uj_per_example"]
    teacher = report["references"]["teacher"]
    expected = [f"acc {100 * results['acc']:.2f}", "88.19", f"{100 * teacher:.2f}",
                f"{round(results['spikes_per_example']):,}", f"{energy['snn']:,.1f} uJ",
                f"{energy['ann_student']:,.1f} uJ ({energy['ann_student'] / energy['snn']:.2f}x)"]
    positions = [row.index(cell) for cell in expected]
    assert positions == sorted(positions), row
    written = json.loads((tmp_path / "summary.json").read_text())["rows"][0]
    assert written["value"] == results["acc"] and written["spikes_per_example"] == results["spikes_per_example"]
    assert written["paper"] == 88.19 and written["paper_source"] == paper_summary.PAPER_SOURCE
    # The run's own summary (printed at its end) is the same table.
    assert row in runs["rest"][0].stdout


@pytest.mark.slow
@pytest.mark.system
def test_a_changed_setting_reruns_from_its_stage_and_an_interrupted_stage_continues(recipe_runs, tmp_path):
    root, args, runs = recipe_runs
    before = runs["rerun"][1]
    # An interrupted prediction KD (no marker, its checkpoints there) continues from its last checkpoint.
    (root / "stages" / "pred.json").unlink()
    proc = _paper(*args, "--no_estimate")
    assert _reused(proc.stdout) == ["pregenerate", "general", "ikd"]
    assert "(continues checkpoint-5)" in proc.stdout and "--continue_train" in proc.stdout
    assert "resumed from" in (root / "logs" / "pred.log").read_text()
    # A changed prediction KD setting: the stages before it are reused, it and the evaluation run again.
    proc = _paper(*args, "--no_estimate", "--pred_lr", "1e-4")
    assert _reused(proc.stdout) == ["pregenerate", "general", "ikd"]
    assert "--learning_rate 0.0001" in proc.stdout
    assert (root / "ikd" / "model.safetensors").stat().st_mtime_ns == before["ikd/model.safetensors"]
    assert (root / "pred" / "model.safetensors").stat().st_mtime_ns != before["pred/model.safetensors"]
