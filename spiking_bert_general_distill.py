"""General distillation of a spiking BERT student from a pre-trained BERT teacher (pipeline step 2 of the README).

Example::

    python spiking_bert_general_distill.py --pregenerated_data data/pregenerated \
        --teacher_model bert-base-uncased/ --spiking_student_model spiking_student_model/ \
        --output_dir runs/general --do_lower_case --t_conv 16

See ``--help`` for all flags; errors a user can fix are reported in one line.
"""
import sys
from typing import List

from spikingbert.cli.edge import run_cli


def main(argv: List[str]) -> int:
    from spikingbert.cli.flags import parse_general_args  # here: run_cli handles signals from the start
    from spikingbert.run.stages import run_general_distillation

    return run_general_distillation(parse_general_args(argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
