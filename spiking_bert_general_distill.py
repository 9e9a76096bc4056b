"""General distillation of a spiking BERT student from a pre-trained BERT teacher (pipeline step 2 of the README).

Example::

    python spiking_bert_general_distill.py --pregenerated_data data/pregenerated \
        --teacher_model bert-base-uncased/ --spiking_student_model spiking_student_model/ \
        --output_dir runs/general --do_lower_case --t_conv 16

See ``--help`` for all flags; errors a user can fix are reported in one line.
"""
from spikingbert.apps.scripts import general_distill as main  # noqa: F401  (tests run it)
from spikingbert.apps.scripts import general_distill_cli as cli

if __name__ == "__main__":
    cli()
