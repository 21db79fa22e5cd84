#!/usr/bin/env bash
# Checks pyproject.toml's dependency ranges the way users meet them (docs/install.md has the output):
#   bench/install_check.sh [WHICH...]      WHICH = keep-torch | lowest | newest (default: all three)
# keep-torch: a Python 3.11 env that already holds torch 2.13.0 + torchvision 0.28.0 (not the pins);
#             `pip install .[test]` must keep that torch, and the test subset must pass on it.
# lowest:     Python 3.12, every direct dependency at the lowest version its range allows
#             (uv's --resolution lowest-direct), then the test subset.
# newest:     Python 3.13, the newest releases the ranges allow (plain pip), then the test subset.
# Each env is made in a scratch dir from a clean clone of HEAD, so local edits are not checked.
# PY311/PY312/PY313 name the interpreters (default: pyenv's, else python3.X on PATH). TESTS picks
# the subset (default below: models, formulas, tokenizers, data, export through timm, config, CLI).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=${SCRATCH:-$(mktemp -d /tmp/ldae-install-XXXX)}
TESTS=${TESTS:-"tests/test_models.py tests/test_diffusion.py tests/test_lars.py tests/test_tokenizer_pca.py tests/test_tokenizers_patch.py tests/test_tokenizer_conv_vae.py tests/test_data.py tests/test_export.py tests/test_config.py tests/test_sampling.py"}
py() {  # VERSION -> interpreter path
  local v=$1 var="PY${1/./}"
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  for c in "$HOME/.pyenv/versions/$v"*/bin/python3 "$(command -v "python$v" || true)"; do
    [ -x "$c" ] && { echo "$c"; return; }
  done
  echo "no Python $v found: set PY${1/./}=/path/to/python$v" >&2; exit 2
}
git clone -q "$ROOT" "$SCRATCH/src"
cd "$SCRATCH/src"
subset() {  # ENV: run the subset with the env's interpreter against the installed (not the source) ldae
  local env=$1
  (cd "$SCRATCH/src" && env -u PYTHONPATH "$env/bin/python" -m pytest -p no:cacheprovider -W ignore::DeprecationWarning $TESTS 2>&1 | tail -1)
}
versions() { "$1/bin/python" -c "import sys, torch, torchvision, timm, numpy, sklearn, matplotlib, PIL, safetensors; print('python', sys.version.split()[0], '| torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__, '| numpy', numpy.__version__, '| scikit-learn', sklearn.__version__, '| matplotlib', matplotlib.__version__, '| pillow', PIL.__version__, '| safetensors', safetensors.__version__)"; }
for which in ${@:-keep-torch lowest newest}; do
  env=$SCRATCH/$which
  echo "== $which"
  case $which in
    keep-torch)
      "$(py 3.11)" -m venv "$env"
      # from the index itself (a local wheel dir may hold a CPU-only torch that PyPI's torchvision
      # cannot load beside)
      env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$env/bin/pip" install -q torch==2.13.0 torchvision==0.28.0
      before=$("$env/bin/python" -c "import torch; print(torch.__version__)")
      "$env/bin/pip" install -q ".[test]" 2>&1 | grep -v "is ignored" || true
      after=$("$env/bin/python" -c "import torch; print(torch.__version__)")
      echo "torch before: $before, after pip install .[test]: $after"
      [ "$before" = "$after" ] || { echo "FAIL: pip replaced the env's torch" >&2; exit 1; } ;;
    lowest)
      "$(py 3.12)" -m venv "$env"
      "$env/bin/pip" install -q uv 2>&1 | grep -v "is ignored" || true
      "$env/bin/uv" pip install -q --python "$env/bin/python" --resolution lowest-direct ".[test]" ;;
    newest)
      "$(py 3.13)" -m venv "$env"
      "$env/bin/pip" install -q ".[test]" 2>&1 | grep -v "is ignored" || true ;;
    *) echo "WHICH must be keep-torch, lowest or newest" >&2; exit 2 ;;
  esac
  versions "$env"
  "$env/bin/python" -m ldae --version
  subset "$env"
done
