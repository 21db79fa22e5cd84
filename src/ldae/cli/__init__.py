"""The one console script. Thin: parse arguments (:mod:`.parser`), build the config and call one
engine's ``run`` (:mod:`.commands`, dispatched by the ``COMMANDS`` table).

    ldae fit-tokenizer -c PRESET [key=value ...] --out DIR
    ldae pretrain      -c PRESET [key=value ...] --out RUN_DIR [--resume auto|CKPT] [--force]
                       [--allow-config-change]
    ldae linprobe      --out RUN_DIR [--fast] [--encoder ldae|random|pixels] [key=value ...]
    ldae linprobe      --out RUN_DIR --sweep [linprobe.sweep_t=[...] ...]   (App. A sweeps)
    ldae linprobe      --from EXPORT_DIR|timm:NAME [--weights FILE] --out DIR -c PRESET
    ldae finetune      --out RUN_DIR [--init ldae|random] [--resume auto] [key=value ...]
    ldae finetune      --from EXPORT_DIR|timm:NAME [--weights FILE] --out DIR -c PRESET
    ldae trajectory    --scale debug|cifar10-cpu|cifar10-gpu|imagenet [--rows ROWS] [--out DIR]
                       [--full] [--list] [key=value ...]   (the paper's tables, row by row)
    ldae export        RUN_DIR [--t 10] [--blocks k] --out DIR   (a plain timm ViT)
    ldae sample        RUN_DIR [--n N] [--sampler ddpm|ddim] [--steps S] [--guidance G] [--out DIR]
    ldae fid           RUN_DIR [--samples NPZ] [--weights INCEPTION_FILE] [--n N] [key=value ...]
    ldae figures       RUN_DIR|TRAJECTORY_DIR [--out DIR] [--tokenizer FILE ...] [--t T ...]
    ldae prepare-data  SRC DST [--size 256] [--splits train,val] [--workers N] [--on-bad-image skip]
    ldae demo          [--out DIR] [key=value ...]
    ldae info          [RUN_DIR]

Errors caused by input print one paragraph and exit with status 2; an error of the operating
system (disk full, no permission) one paragraph and status 74; a run stopped by SIGTERM/SIGUSR1
after saving exits 75, by Ctrl-C 130 (see ``ldae.preempt``).
"""
from __future__ import annotations

import sys

from ..errors import EXIT_NONFINITE, LdaeError, NonFiniteLoss, shown
from .commands import COMMANDS
from .parser import build_parser
from .support import EXIT_OS_ERROR, check_args, os_error_message

__all__ = ["COMMANDS", "EXIT_OS_ERROR", "build_parser", "main"]


def _one_paragraph(e: BaseException) -> str:
    """An error's message as one line: line breaks (from a path, a library's message) folded,
    control characters escaped. A DataLoader worker re-raises an error with the worker's
    traceback prepended ("Caught DataError in DataLoader worker process 0. Original Traceback
    ..."); its last line is the original "module.Class: message", which is what is kept."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = msg.strip().splitlines()[-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        msg = last[len(prefix):] if last.startswith(prefix) else last
    return shown(" ".join(msg.split()), 2000) or type(e).__name__


#: the commands that train (their signal handlers go in before anything slow)
TRAINING = ("pretrain", "finetune")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.cmd in TRAINING:  # SIGTERM/SIGUSR1/SIGINT set a flag from here on (ldae.preempt)
        from ..preempt import install  # lazy: ldae.preempt imports torch (`ldae --help` must not)

        install()
    # key=value overrides may also follow the flags (argparse stops the positional list at the
    # first flag): collect them; anything else is a real error
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {shown(' '.join(extra), 300)}")
    try:
        check_args(args)
        return COMMANDS[args.cmd](args) or 0
    except LdaeError as e:
        print(f"ldae {args.cmd}: error: {_one_paragraph(e)}", file=sys.stderr)
        from ..preempt import Preempted  # lazy: ldae.preempt imports torch

        if isinstance(e, Preempted):
            return e.exit_code
        return EXIT_NONFINITE if isinstance(e, NonFiniteLoss) else 2
    except OSError as e:
        print(f"ldae {args.cmd}: error: {_one_paragraph(os_error_message(e))}", file=sys.stderr)
        return EXIT_OS_ERROR
    except KeyboardInterrupt:
        from ..preempt import EXIT_INTERRUPTED  # lazy: ldae.preempt imports torch

        print(f"ldae {args.cmd}: interrupted; files are written atomically, so nothing "
              "half-written is left (a training run continues with --resume auto from its last "
              "checkpoint).", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
