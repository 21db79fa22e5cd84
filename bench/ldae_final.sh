#!/usr/bin/env bash
# The final comparison of issue 14 at the `cifar10-cpu` preset's full budget (docs/results.md):
#   bench/ldae_final.sh KIND SEED [THREADS]
#   KIND = ldae | ddm | pixel | mae | mocov3 | pixels32 | pixels64
# ldae  = the preset as shipped (Tab. 3 last line); ddm = the PCA DDM (Tab. 3 line 1: predict eps,
# linear gamma^2 schedule, latent input and output); pixel = Fig. 5's pixel DDM (d = D = 192);
# mae / mocov3 = Tab. 4's baselines (issue 18), their own presets cifar10-cpu-mae / -mocov3 at
# the same images seen; pixels32/64 = a linear probe on raw pixels at 32 px / 64 px. Each pretrained run is probed at
# its end (clean input = projected, the default; the l-DAE also with the original image) and at
# the checkpoints of the epochs in EPOCH_PROBES (default "1 2 4"; "" skips them). Two such jobs
# fit side by side on a 2-core machine with THREADS=1 (the default); a job resumes where it
# stopped when run again. MORE="key=value ..." adds run-time overrides (e.g. MORE=train.ckpt_every=117
# for a checkpoint every third of an epoch, so a run cut short loses less; a resume may change it).
set -euo pipefail
KIND=$1; SEED=$2; THREADS=${3:-1}
LDAE=${LDAE:-.venv/bin/ldae}
OUT=${FINAL:-runs/final}/$KIND-s$SEED
PRESET=cifar10-cpu
DDM="model.class_cond=false diffusion.schedule=linear_gamma2 diffusion.target=eps diffusion.loss_weight=none diffusion.input_space=latent diffusion.output_space=latent"
case $KIND in
  ldae) EXTRA="" ;;
  ddm) EXTRA="$DDM" ;;
  pixel) EXTRA="$DDM tokenizer.name=pixel tokenizer.dim=192" ;;
  mae) PRESET=cifar10-cpu-mae; EXTRA="" ;;
  mocov3) PRESET=cifar10-cpu-mocov3; EXTRA="" ;;
  pixels64) $LDAE linprobe -c cifar10-cpu --fast --encoder pixels --out "$OUT" train.seed=$SEED train.threads=$THREADS; exit ;;
  pixels32) $LDAE linprobe -c cifar10-cpu --fast --encoder pixels --out "$OUT" train.seed=$SEED train.threads=$THREADS \
              data.image_size=32 model.patch_size=4 tokenizer.dim=4; exit ;;
  *) echo "KIND must be ldae, ddm, pixel, mae, mocov3, pixels32 or pixels64" >&2; exit 2 ;;
esac
if [ -d "$OUT/checkpoints" ]; then
  $LDAE pretrain -c $PRESET --out "$OUT" --resume auto train.seed=$SEED train.threads=$THREADS train.keep_ckpts=20 $EXTRA ${MORE:-}
else
  $LDAE pretrain -c $PRESET --out "$OUT" train.seed=$SEED train.threads=$THREADS train.keep_ckpts=20 $EXTRA ${MORE:-}
fi
probe() {  # TAG [args...]
  local tag=$1; shift
  [ -f "$OUT/eval/linprobe${tag:+-$tag}.json" ] || $LDAE linprobe --out "$OUT" --fast ${tag:+--tag $tag} "$@" train.threads=$THREADS
}
probe ""
[ "$KIND" = ldae ] && probe original linprobe.clean_input=original
for ep in ${EPOCH_PROBES-1 2 4}; do
  probe ep$ep --ckpt "$OUT/checkpoints/ckpt-$(printf %08d $((351 * ep))).pt"
done
