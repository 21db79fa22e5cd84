"""Run-dir logging: ``metrics.jsonl`` is the source of truth (EDM2's stats.jsonl); TensorBoard is
an optional sink; progress bars show img/s and ETA. Only rank 0 writes or prints."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .checkpoint import atomic_write_text


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``metrics.jsonl``), blank lines skipped."""
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


class MetricsLog:
    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = False,
                 name: str = "metrics.jsonl"):
        self.enabled = enabled
        self.path = Path(run_dir) / name
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # lazy: optional dependency (ldae[tensorboard])
            except ImportError:
                print("tensorboard is not installed (pip install 'ldae[tensorboard]'); "
                      "logging to metrics.jsonl only", file=sys.stderr)
            else:
                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines past the checkpoint's step so the log has no duplicates, and any
        line a killed process left half-written. Atomic: a kill here loses nothing."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for ln in self.path.read_text().splitlines():
            try:
                rec = json.loads(ln)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("step", 0) <= step:
                keep.append(ln)
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, step)

    def image(self, tag: str, image, step: int) -> None:
        """A (3, H, W) image in [0, 1] to TensorBoard (no-op without it)."""
        if self.tb is not None:
            self.tb.add_image(tag, image, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def progress(total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "img") -> tqdm:
    """A bar counted in images, so its rate reads img/s and its ETA is right for any batch size."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True,
                disable=not enabled, dynamic_ncols=True, smoothing=0.1, mininterval=1.0)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
