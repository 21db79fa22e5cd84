"""Write torch-fidelity's Inception-V3 at *random init* in the real FID weights file's format.

    python bench/standin_inception.py OUT.pth

For plumbing checks of `ldae fid` on machines that cannot download the real file
(weights-inception-2015-12-05-6726825d.pth): the network, the TF-compatible resize, the
statistics, the cache and the record are the real ones, but an FID computed with these weights
is meaningless. Never report it as a result.
"""
from __future__ import annotations

import sys

from ldae.engine.fid import write_standin_weights

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"wrote {write_standin_weights(sys.argv[1])}: a random-init Inception-V3 in "
          "torch-fidelity's format (plumbing only)")
