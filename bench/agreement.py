"""Both simulation engines on a trained student and a dev set: predictions, metric, per-layer ASR.

    python -m bench.agreement --student runs/demo/pred --data_dir runs/demo/data/rotten_tomatoes \\
        --task_name SST-2 --max_seq_length 48 --eval_batch_size 64 [--out FILE]

One pass of :func:`spikingbert.evaluation.measure.collect_spike_stats` per engine (the dense engine, then the
default one), each timed; prints one JSON line: the share of dev examples with identical
predictions, both metrics, and each layer's ASR on real tokens with its relative change.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from spikingbert.data.glue import canonical_task_name, get_processor, load_task_dataset
from spikingbert.evaluation import report
from spikingbert.models.spiking_bert import SpikingBertForSequenceClassification
from spikingbert.modules import event_engine
from spikingbert.runtime import keep_freed_memory
from spikingbert.transformer.tokenization import BertTokenizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--task_name", default="SST-2")
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--out", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("spikingbert.modules.event_engine").setLevel(logging.INFO)
    keep_freed_memory()
    task = canonical_task_name(args.task_name)
    tokenizer = BertTokenizer.from_pretrained(args.student, do_lower_case=True)
    dev, _, _ = load_task_dataset(task, args.data_dir, "dev", tokenizer, args.max_seq_length)
    model = SpikingBertForSequenceClassification.from_pretrained(
        args.student, num_labels=get_processor(task).num_labels).eval()
    loader = DataLoader(dev, batch_size=args.eval_batch_size, shuffle=False)
    stats, seconds = {}, {}
    for name in ("dense", "auto"):
        with event_engine.engine_override(name):
            start = time.perf_counter()
            stats[name] = report.collect_spike_stats(model, loader, task=task, convergence=False)
            seconds[name] = time.perf_counter() - start
    dense, event = stats["dense"], stats["auto"]
    asr = {key: {"dense": round(dense.asr_real_tokens[key], 5), "event": round(event.asr_real_tokens[key], 5),
                 "relative_change": (event.asr_real_tokens[key] - dense.asr_real_tokens[key])
                 / max(dense.asr_real_tokens[key], 1e-12)} for key in dense.layers}
    row = {"case": "agreement", "student": str(args.student), "task": task, "examples": dense.num_examples,
           "T": dense.t_conv, "threads": torch.get_num_threads(), "engine": event_engine.engine()[0],
           "identical_predictions": float(np.mean(dense.predictions == event.predictions)),
           "metrics_dense": dense.metrics, "metrics_event": event.metrics,
           "max_asr_relative_change": max(abs(v["relative_change"]) for v in asr.values()), "asr": asr,
           "seconds_dense": round(seconds["dense"], 2), "seconds_event": round(seconds["auto"], 2)}
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
