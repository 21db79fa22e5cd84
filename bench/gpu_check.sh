#!/usr/bin/env bash
# The GPU checks of one short GPU session: under 10 minutes on one H100/H200, all steps included.
#
#   (a) env         nvidia-smi; python, torch, CUDA, the device; the project's imports   (<= 20 s)
#   (b) tests       python -m pytest tests/test_gpu.py -rs                                (<= 80 s)
#                   then bench/pca.py on the GPU (PCA fit speed, into pca.log)            (<= 30 s)
#   (c) throughput  python bench/throughput.py --sweep --json $OUT_DIR/throughput.json
#                   with what is left of 225 s; each configuration in its own process
#                   (<= 90 s each), presets in order of importance, the rest skipped when
#                   the time is spent
#   (d) trajectory  issue 3's rows at scale cifar10-gpu on the CIFAR-10 subset carried in
#                   .gpu/ (<= $TRAJ_S s, default 200); run the device call with carry [".gpu"]
#   (e) finetune    App. B on the l-DAE row of (d), then the same ViT from random init, a few
#                   epochs each (<= $FT_S s each, default 45); results into $OUT_DIR/ft-*.json
#   (f) generate    pretrain preset dit-digits (class-conditional DiT) and sample a guided grid
#                   (<= $GEN_S s, default 45) -> $OUT_DIR/dit-digits-grid.png; FID when
#                   $FID_WEIGHTS names the Inception weights file (it cannot be downloaded there)
#
# A step that fails or times out prints "FAILED" and the next one still runs; the exit status is
# the number of failed steps. Logs (env, tests, throughput, ... as logs.tgz), throughput.json, the
# trajectory's results and the fine-tune records go to ${OUT:-/tmp/ldae-gpu}. Needs no install: src/ goes on PYTHONPATH. Python: $PYTHON, else python3.
#
#   bash bench/gpu_check.sh
#   OUT=$OUT PYTHON=python3 bash bench/gpu_check.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR="${OUT:-/tmp/ldae-gpu}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
TOTAL_S=225   # the sweep gets what the first two steps leave of this
START=$SECONDS
FAILED=0
SUMMARY=()

# run_step NAME LIMIT_S CMD...: run under `timeout`, tee to $OUT_DIR/NAME.log, never abort the script
run_step() {
    local name=$1 limit=$2
    shift 2
    echo "=== [$name] $* (limit ${limit} s, at $((SECONDS - START)) s)"
    local t0=$SECONDS rc=0
    { timeout -k 5 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"; } || rc=$?
    local took=$((SECONDS - t0))
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("$name: ok (${took} s)")
    else
        FAILED=$((FAILED + 1))
        local why="rc $rc"
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then why="timed out after ${limit} s"; fi
        SUMMARY+=("$name: FAILED, $why (${took} s); see $OUT_DIR/$name.log")
        echo "=== [$name] FAILED ($why)"
    fi
}

env_report() {  # prints everything, then fails if nvidia-smi, CUDA in torch or an import is missing
    local rc=0
    nvidia-smi || { echo "FAILED: nvidia-smi"; rc=1; }
    "$PY" - <<'EOF' || rc=1
import importlib, os, platform, sys
import torch
bad = False
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}; "
      f"CUDA {torch.version.cuda}; cuDNN {torch.backends.cudnn.version()}; "
      f"{os.cpu_count()} CPUs")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB, "
          f"capability {p.major}.{p.minor}; bf16 supported: {torch.cuda.is_bf16_supported()}")
else:
    print("FAILED: torch sees no CUDA device")
    bad = True
for mod in ("ldae", "timm", "torchvision", "safetensors", "yaml", "tqdm", "matplotlib", "sklearn", "pytest"):
    try:
        m = importlib.import_module(mod)
        print(f"  {mod} {getattr(m, '__version__', '')}")
    except Exception as e:  # report every missing module, not only the first
        print(f"FAILED: import {mod}: {type(e).__name__}: {e}")
        bad = True
sys.exit(1 if bad else 0)
EOF
    return "$rc"
}

export PY
export -f env_report
run_step env 20 bash -c env_report
run_step tests 80 "$PY" -m pytest tests/test_gpu.py -rs -p no:cacheprovider
run_step pca 30 "$PY" bench/pca.py --images 5000 --device cuda   # issue 6: < 1 min for 50,000
LEFT=$((TOTAL_S - (SECONDS - START)))
if [ "$LEFT" -lt 60 ]; then LEFT=60; fi
run_step throughput $((LEFT + 10)) "$PY" bench/throughput.py --sweep --sweep-budget "$LEFT" \
    --config-timeout 90 --json "$OUT_DIR/throughput.json"

# (d) a short real CIFAR-10 run: the trajectory rows of issue 3 at scale cifar10-gpu, on the
#     class-balanced subset carried in .gpu/ (bench/cifar_subset.py: 20,000 train + the 5,000 val
#     images; ../shared does not travel to the GPU machine). Skipped when the subset is absent.
TRAJ_S="${TRAJ_S:-200}"
SUB=.gpu/cifar10-sub.npz
if [ -f "$SUB" ]; then
    run_step unpack 60 "$PY" bench/cifar_subset.py unpack "$SUB" /tmp/cifar10-sub
    run_step trajectory "$TRAJ_S" "$PY" -m ldae.cli trajectory --scale cifar10-gpu \
        --rows "${TRAJ_ROWS:-tab3-ldae,fig5-pixel-256,tab2-pca-d16,tab2-pca-d32,tab2-pca-d64,tab3-single-level}" \
        --out /tmp/traj-gpu data.path=/tmp/cifar10-sub/cifar10-sub.npz
    for f in results.md results.csv figures/trajectory.png; do  # $OUT brings back 8 files at most
        [ -f "/tmp/traj-gpu/$f" ] && cp "/tmp/traj-gpu/$f" "$OUT_DIR/traj-$(basename "$f")"
    done
    # (e) App. B fine-tuning of that l-DAE encoder and of the same ViT at random init
    FT_S="${FT_S:-45}"
    ROW=/tmp/traj-gpu/rows/tab3-ldae
    if [ -d "$ROW/checkpoints" ]; then
        for init in ldae random; do
            run_step "finetune-$init" "$FT_S" "$PY" -m ldae.cli finetune --out "$ROW" --init "$init" \
                finetune.epochs=3 finetune.warmup_epochs=0.5 finetune.ema=0.99 data.num_workers=8
        done
        for f in finetune.json finetune-random.json; do
            [ -f "$ROW/eval/$f" ] && cp "$ROW/eval/$f" "$OUT_DIR/ft-$f"
        done
    fi
else
    echo "=== [trajectory] skipped: no $SUB (python bench/cifar_subset.py pack ../shared/data/cifar10 $SUB)"
fi

# (f) generation: the class-conditional DiT of preset dit-digits (bundled digits), then a
#     guided DDPM grid (one column per class); FID too when $FID_WEIGHTS names the Inception file
GEN_S="${GEN_S:-45}"
run_step generate "$GEN_S" bash -c "\"$PY\" -m ldae.cli pretrain -c dit-digits --out /tmp/dit-digits --force \
    && \"$PY\" -m ldae.cli sample /tmp/dit-digits --guidance 3 --out /tmp/dit-digits-samples \
    && { [ -z \"${FID_WEIGHTS:-}\" ] || \"$PY\" -m ldae.cli fid /tmp/dit-digits --guidance 3 \
         --weights \"$FID_WEIGHTS\"; }"
[ -f /tmp/dit-digits-samples/grid.png ] && cp /tmp/dit-digits-samples/grid.png "$OUT_DIR/dit-digits-grid.png"

echo
echo "=== gpu_check summary ($((SECONDS - START)) s in all; logs in $OUT_DIR/logs.tgz)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
# the device tool brings back 8 files at most: the logs travel as one archive
(cd "$OUT_DIR" && tar czf logs.tgz ./*.log && rm -f ./*.log) || true
exit "$FAILED"
