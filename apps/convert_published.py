"""Import a checkpoint written by the authors' published SpikingBERT code (`models.convert_published`).

    python -m apps.convert_published --checkpoint FILE.bin --config DIR_OR_JSON --output_dir OUT \
        [--t_conv N --vth V --leak L --num_labels K]

The checkpoint is read with ``weights_only=True`` (a file that would run code is refused), the config's
fields are checked, and the model is built before ``--output_dir`` is created; the directory is then
locked for this run, and on a failure what the run created in it is removed. Errors are one line (exit
status 2: a wrong flag or config, 1: an unreadable file or a failed write).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List

from spikingbert.cli.edge import ArgumentParser, HelpFormatter, run_cli, short_metavars
from spikingbert.core.errors import UsageError

__all__ = ["convert_parser", "main"]

logger = logging.getLogger(__name__)


def convert_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m apps.convert_published", formatter_class=HelpFormatter,
                            description="Import a checkpoint written by the authors' published SpikingBERT code.",
                            epilog="The result is a complete student directory (config.json, model.safetensors, "
                                   "vocab.txt when found beside --config).")
    p = parser.add_argument
    p("--checkpoint", required=True, metavar="FILE", help="the published pytorch_model.bin or step_N_pytorch_model.bin")
    p("--config", required=True, metavar="DIR_OR_JSON",
      help="student config dir or config.json used for that checkpoint")
    p("--output_dir", type=Path, required=True, metavar="DIR", help="where the converted student directory is written")
    p("--t_conv", type=int, metavar="N",
      help="simulation steps used in training (default: the config's; the published default is 100)")
    p("--vth", type=float, metavar="X", help="threshold used in training (default: the config's; published: 1.0)")
    p("--leak", type=float, metavar="X", help="leak used in training (default: the config's; published: 1.0, IF)")
    p("--num_labels", type=int, metavar="N",
      help="classes of a task checkpoint (default: read from the classifier head when there is one)")
    p("--feedback", action="store_true", help="keep the feedback Linear (network_s{6L+1}.fc) (default: off)")
    p("--debug", action="store_true", help="show tracebacks")
    short_metavars(parser)
    return parser


def _check_files(args: argparse.Namespace) -> None:
    if not Path(args.checkpoint).is_file():
        raise UsageError(f"--checkpoint {args.checkpoint} is not a file")
    config = Path(args.config)
    if not (config / "config.json" if config.is_dir() else config).is_file():
        raise UsageError(f"--config {args.config} does not exist: pass the student config dir or its config.json")


def main(argv: List[str]) -> int:
    args = convert_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _check_files(args)
    from spikingbert.core.errors import ModelError
    from spikingbert.core.output_dir import check_output_location, claim_output_dir
    from spikingbert.models.convert_published import build_converted

    check_output_location(args.output_dir, "--output_dir")
    try:
        model, vocab = build_converted(args.checkpoint, args.config, t_conv=args.t_conv, vth=args.vth, leak=args.leak,
                                       num_labels=args.num_labels, feedback=args.feedback or None)
    except ModelError as err:                        # the checkpoint cannot be read; its message names the file
        raise err.about("--checkpoint") from err
    with claim_output_dir(args.output_dir, "--output_dir"):
        model.save_pretrained(args.output_dir, vocab_file=vocab)
    logger.info("wrote %s (%s, %d layers)", args.output_dir, type(model).__name__, model.config.num_hidden_layers)
    return 0


def cli() -> None:
    """The command line (installed as the console script ``spikingbert-convert-published``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
