"""`ldae` in a child process with one injected fault (tests/test_reliability.py).

    python tests/_fault_run.py pretrain ... key=value ...

LDAE_FAULT picks the fault (none: a plain run):
  step:N     SIGKILL itself right after optimizer step N (between steps, nothing being written)
  save:K     the K-th checkpoint write of this process: half the file written, then SIGKILL
             (the temporary file is left behind, as a real kill would leave it)
  digest:K   the K-th checkpoint write: SIGKILL after its sha256 sidecar is in place, before the
             checkpoint itself is renamed into place
  signal:N:SIG  send itself SIG (TERM, USR1 or INT) after step N; the run should save and exit
             75 (130 for INT)
  early:SIG  send itself SIG while the run starts up (when it builds its dataset), before step 1
"""
from __future__ import annotations

import os
import signal
import sys


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str) -> None:
    from ldae import checkpoint
    from ldae.engine import pretrain

    kind, _, arg = fault.partition(":")
    if kind in ("step", "signal"):
        n, _, sig = arg.partition(":")
        real_step = pretrain.Trainer.train_step

        def train_step(self, *a, **k):
            out = real_step(self, *a, **k)
            if self.step == int(n):
                if kind == "step":
                    _kill()
                os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))
            return out

        pretrain.Trainer.train_step = train_step
    elif kind == "early":
        real_build = pretrain.build_dataset

        def build_dataset(*a, **k):
            os.kill(os.getpid(), getattr(signal, f"SIG{arg}"))
            return real_build(*a, **k)

        pretrain.build_dataset = build_dataset
    elif kind in ("save", "digest"):
        count = {"n": 0}
        real_save, real_text = checkpoint.torch.save, checkpoint.atomic_write_text

        def save(state, f, *a, **k):
            count["n"] += 1
            real_save(state, f, *a, **k)
            if kind == "save" and count["n"] == int(arg):
                if hasattr(f, "flush"):  # checkpoint.save hands torch an open file
                    f.flush()
                name = getattr(f, "name", f)
                size = os.path.getsize(name)
                with open(name, "rb+") as fh:
                    fh.truncate(size // 2)
                _kill()

        def write_text(path, text):
            real_text(path, text)
            if kind == "digest" and str(path).endswith(".sha256") and count["n"] == int(arg):
                _kill()

        checkpoint.torch.save = save  # only this child process's torch module
        checkpoint.atomic_write_text = write_text
    else:
        raise SystemExit(f"unknown LDAE_FAULT {fault!r}")


if __name__ == "__main__":
    if os.environ.get("LDAE_FAULT"):
        install(os.environ["LDAE_FAULT"])
    from ldae.cli import main

    sys.exit(main(sys.argv[1:]))


def ddp_worker(rank: int, world: int, port: int, out: str, overrides: list[str], fault: str,
               fault_rank: int) -> None:
    """One rank of a gloo group (tests' stand-in for torchrun) with ``fault`` installed on rank
    ``fault_rank`` only; a Preempted ending is written to ``out/preempted-<rank>``."""
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pathlib import Path

    from ldae.config import load_config
    from ldae.dist import teardown
    from ldae.engine import pretrain
    from ldae.preempt import Preempted

    if rank == fault_rank:
        install(fault)
    try:
        pretrain.run(load_config(None, overrides), Path(out))
    except Preempted as e:
        (Path(out) / f"preempted-{rank}").write_text(str(e))
    finally:
        teardown()
