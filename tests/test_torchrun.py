"""torchrun --nproc_per_node 2 on CPU (gloo): DistributedDataParallel training and sharded evaluation.

STS-B (Pearson/Spearman depend on every prediction and its position) with 11 dev examples,
so DistributedSampler pads one rank with a repeat that must not be counted twice.
"""
import json
import subprocess
import sys

import pytest

from tests.helpers.world import REPO, build_world, max_weight_diff, read_jsonl, script_env, task_args

pytestmark = [pytest.mark.system, pytest.mark.slow]


def _torchrun(*args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "spiking_bert_task_distill.py"), *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _single(*args, timeout=300):
    proc = subprocess.run([sys.executable, str(REPO / "spiking_bert_task_distill.py"), *map(str, args)], cwd=REPO,
                          env=script_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_torchrun_two_processes_train_and_evaluate_like_one(tmp_path):
    world = build_world(tmp_path / "world", dev_size=11)
    # No dropout: two ranks x 4 examples then see exactly the single process's batch of 8.
    config = json.loads((world.student_config / "config.json").read_text())
    (world.student_config / "config.json").write_text(json.dumps(
        {**config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    extra = ["--pred_distill", "--num_train_epochs", "1", "--max_seq_length", "24", "--eval_step", "2",
             "--eval_batch_size", "4", "--no_cuda", "--learning_rate", "1e-3", "--save_total_limit", "5"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    proc = _torchrun(*task_args(world, "STS-B", world.student_config, ddp, *extra))
    assert "4 per micro-batch x 1 accumulation x 2 processes" in proc.stderr
    _single(*task_args(world, "STS-B", world.student_config, single, *extra))

    # Same training: every step averages the gradient of the same 8 examples (up to float rounding,
    # which is tiny next to what the last three steps changed).
    moved = max_weight_diff(single / "checkpoint-2", single / "checkpoint-5")
    assert moved > 1e-3
    assert max_weight_diff(ddp / "checkpoint-5", single / "checkpoint-5") < 0.01 * moved
    ddp_evals = [r for r in read_jsonl(ddp / "metrics.jsonl") if "eval" in r]
    single_evals = [r for r in read_jsonl(single / "metrics.jsonl") if "eval" in r]
    assert [r["step"] for r in ddp_evals] == [2, 4, 5]
    for d, s in zip(ddp_evals, single_evals):
        assert d["eval"] == pytest.approx(s["eval"], abs=1e-5)

    # The sharded evaluation during torchrun training equals a single-process --do_eval of that checkpoint.
    eval_args = ["--do_eval", "--task_name", "STS-B", "--data_dir", world.stsb, "--do_lower_case",
                 "--max_seq_length", "24", "--eval_batch_size", "4", "--no_cuda",
                 "--spiking_student_model", ddp / "checkpoint-5"]
    _single(*eval_args, "--output_dir", tmp_path / "eval_single")
    reference = json.loads((tmp_path / "eval_single" / "eval_results.json").read_text())
    assert reference["examples"] == 11
    for key in ("pearson", "spearmanr", "corr"):
        assert ddp_evals[-1]["eval"][key] == pytest.approx(reference[key], abs=1e-6)

    # And torchrun --do_eval (two shards, one padded) gives the same numbers.
    _torchrun(*eval_args, "--output_dir", tmp_path / "eval_ddp")
    sharded = json.loads((tmp_path / "eval_ddp" / "eval_results.json").read_text())
    assert sharded["examples"] == 11
    for key in ("pearson", "spearmanr", "corr"):
        assert sharded[key] == pytest.approx(reference[key], abs=1e-6)
