"""Task distillation and evaluation of a spiking BERT student on a GLUE task (pipeline steps 3a, 3b and 4 of the
README).

Examples::

    # intermediate-layer KD from a fine-tuned teacher (per-task default epochs / sequence length)
    python spiking_bert_task_distill.py --task_name SST-2 --data_dir glue/SST-2 --teacher_model bert-sst2/ \
        --spiking_student_model runs/general --output_dir runs/sst2-ikd --do_lower_case
    # prediction-layer KD, then evaluation
    python spiking_bert_task_distill.py --pred_distill --task_name SST-2 --data_dir glue/SST-2 \
        --teacher_model bert-sst2/ --spiking_student_model runs/sst2-ikd --output_dir runs/sst2-pred --do_lower_case
    python spiking_bert_task_distill.py --do_eval --task_name SST-2 --data_dir glue/SST-2 \
        --spiking_student_model runs/sst2-pred --output_dir runs/sst2-eval --do_lower_case

See ``--help`` for all flags; errors a user can fix are reported in one line.
"""
from spikingbert.apps.scripts import task_distill as main  # noqa: F401  (tests run it)
from spikingbert.apps.scripts import task_distill_cli as cli

if __name__ == "__main__":
    cli()
