#!/usr/bin/env bash
# GPU check of issues 6 and 12, for a lent CUDA machine (about 8 minutes):
#   * training steps of the paper's Table 1 setting (512-d, bs 112 = 56 classes x 2, 224 crop,
#     multi-similarity, random weights, generated images on the GPU) for ResNet50 and BN-Inception,
#     with and without DAS (K = 8, --detach, as table1.sh): images per second, DAS's share of the
#     step, peak GPU memory (torch.cuda.max_memory_allocated), host syncs of the step
#     (torch.cuda.set_sync_debug_mode);
#   * the old (PIL, float32 in workers) and the new loader (main.py's: --decode auto, i.e. nvJPEG
#     batch decode + one batched roi_align crop on the GPU) alone (generated 500x375 JPEGs);
#   * ResNet50 with --compile, DAS on, data on the GPU and fed by main.py's loader: the ratio
#     loader-fed step / data-on-GPU step (goal of issue 12: at least 0.9);
#   * SOP-sized random embeddings evaluated by bench/eval_scale.py --backend auto --device cuda
#     (torch kNN/k-means on the GPU when the faiss GPU build is absent), against the faiss CPU
#     path (goal: under 3 s).
#
#   bash bench/gpu_check.sh [FIGURES_FILE]
#
# Figures go to FIGURES_FILE, else $OUT/gpu_check.txt when $OUT is set, else ./gpu_check.txt.
# Without CUDA it stops at once with a message and exit status 3. Environment: PYTHON (default
# python3), KERNELS (loader workers, default 8), STEPS (timed steps per repeat, default 100),
# BUDGET_S (whole run, default 500). Python packages missing on the machine (faiss-cpu,
# pretrainedmodels, munch) are installed from wheels in ./.whl when that folder exists; see
# docs/PERFORMANCE.md, "GPU check".
set -uo pipefail

refuse() {
  echo "gpu_check.sh: $1. This check needs a CUDA GPU; run it on a GPU machine" \
       "(on CPU, use: python bench/train_step.py)." >&2
  exit 3
}

command -v nvidia-smi >/dev/null 2>&1 ||
  refuse "no CUDA: nvidia-smi is not on PATH (no NVIDIA driver)"
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 ||
  refuse "no CUDA check possible: '$PYTHON' not found (set PYTHON)"
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site .whl/*.whl || refuse "could not install the wheels in .whl"
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
  || refuse "no CUDA: PyTorch ($PYTHON) sees no CUDA device"

FIGURES=${1:-${OUT:+$OUT/gpu_check.txt}}
FIGURES=${FIGURES:-gpu_check.txt}
case "$FIGURES" in /*) ;; *) FIGURES="$PWD/$FIGURES" ;; esac
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
mkdir -p "$(dirname "$FIGURES")"
: >"$FIGURES"
KERNELS=${KERNELS:-8}
STEPS=${STEPS:-100}
BUDGET_S=${BUDGET_S:-500}
export PYTHONUNBUFFERED=1

say() { echo "$*" | tee -a "$FIGURES"; }

# section NAME MIN_S MAX_S COMMAND...: runs COMMAND with at most MAX_S seconds (less if the
# budget is short), skips it when fewer than MIN_S seconds are left; its output goes to the file
# and its last "key=value ..." line to the summary.
SUMMARY=()
section() {
  local name=$1 min_s=$2 max_s=$3 left log status started=$SECONDS
  shift 3
  left=$((BUDGET_S - SECONDS))
  say ""
  say "== $name"
  if [ "$left" -lt "$min_s" ]; then
    say "skipped: ${left}s of the ${BUDGET_S}s budget left, this needs at least ${min_s}s"
    SUMMARY+=("$name: skipped (time budget)")
    return
  fi
  [ "$max_s" -gt "$left" ] && max_s=$left
  log=$(mktemp)
  timeout "$max_s" "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  cat "$log" >>"$FIGURES"
  if [ "$status" -eq 124 ]; then
    say "stopped after ${max_s}s (time limit of this section)"
    SUMMARY+=("$name: stopped after ${max_s}s")
  elif [ "$status" -ne 0 ]; then
    say "failed with exit status $status"
    SUMMARY+=("$name: failed (exit status $status)")
  else
    SUMMARY+=("$name: $(grep -E '^[a-z_]+=[^ ]+( [a-z_]+=[^ ]+)*$' "$log" | tail -n 1)")
  fi
  rm -f "$log"
  say "($((SECONDS - started))s)"
}

TABLE1=(--crop_size 224 --bs 112 --samples_per_class 2 --embed_dim 512 --loss multisimilarity
  --das_dfs_num_scale 8 --das_dfs_scale_left 0.99 --das_dfs_scale_right 1.01 --das_mts_scale 0.01
  --detach --num_classes 100 --device cuda)
STEP=(bench/train_step.py --modes step --steps "$STEPS" --repeats 2 --warmup 20
  --breakdown_steps 20 --check_syncs 10 "${TABLE1[@]}")

say "GPU check (issues 6 and 12), $(date -u '+%Y-%m-%d %H:%M UTC'), figures file $FIGURES"
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
say "$("$PYTHON" - <<'EOF'
import importlib.util, os, torch
names = ("faiss", "pretrainedmodels", "torchvision")
found = {n: importlib.util.find_spec(n) is not None for n in names}
print(f"torch {torch.__version__} ({torch.cuda.get_device_name()}); {os.cpu_count()} CPU cores; "
      + ", ".join(f"{n}: {'yes' if ok else 'NOT INSTALLED'}" for n, ok in found.items()))
EOF
)"

section "DataLoader alone, old (PIL) vs main.py's (--decode auto), 500x375 JPEGs, --kernels $KERNELS" \
  40 80 \
  "$PYTHON" bench/loader_compare.py --loader_batches 10 --repeats 2 \
  --kernels "$KERNELS" --arch resnet50_double_frozen_normalize "${TABLE1[@]}"

section "ResNet50 --compile, DAS on: data on the GPU, then fed by main.py's loader (--decode auto)" \
  120 230 \
  "$PYTHON" bench/train_step.py --modes step step_loader --das on --steps 50 --repeats 2 \
  --warmup 10 --breakdown_steps 0 --compile --loader_batches 20 --kernels "$KERNELS" \
  --arch resnet50_double_frozen_normalize "${TABLE1[@]}"

if "$PYTHON" -c 'import faiss' 2>/dev/null; then
  if "$PYTHON" -c 'import sys; from evaluation import faiss_gpu_available as gpu
sys.exit(0 if gpu() else 1)'; then
    FAISS_NOTE="faiss GPU build: the project's evaluation searches and clusters with it on the GPU"
  else
    FAISS_NOTE="faiss-gpu is not importable: --eval_backend auto runs kNN and k-means in torch"
    FAISS_NOTE+=" on the GPU"
  fi
  say ""
  say "$FAISS_NOTE (the bare faiss reference and the faiss path of eval_scale.py run on the CPU)"
  section "SOP-sized evaluation (bench/eval_scale.py --backend auto --device cuda)" 60 200 \
    "$PYTHON" bench/eval_scale.py --backend auto --device cuda
else
  say ""
  say "== SOP-sized evaluation skipped: faiss is not installed (neither faiss-gpu nor faiss-cpu;" \
      "carry the faiss-cpu wheel in .whl)"
fi


# Issue 6's eager steps last: issue 12's figures above come first within the budget.
section "ResNet50 (resnet50_double_frozen_normalize), Table 1 step, data on the GPU" 60 150 \
  "$PYTHON" "${STEP[@]}" --arch resnet50_double_frozen_normalize

if "$PYTHON" -c 'import pretrainedmodels' 2>/dev/null; then
  section "BN-Inception (bninception_double_frozen_normalize), Table 1 step, data on the GPU" \
    45 110 \
    "$PYTHON" "${STEP[@]}" --arch bninception_double_frozen_normalize
else
  say ""
  say "== BN-Inception skipped: pretrainedmodels is not installed (carry its wheel in .whl)"
fi

say ""
say "== summary (each section's last line)"
for line in "${SUMMARY[@]}"; do say "$line"; done
say "$(printf '%s\n' "${SUMMARY[@]}" | "$PYTHON" -c '
import re, sys
text = sys.stdin.read()
def value(section, key):
    line = next((l for l in text.splitlines() if l.startswith(section)), "")
    found = re.search(rf"(?:^|[ :]){key}=([0-9.]+)", line)
    return float(found.group(1)) if found else None
lines = []
on_gpu = value("ResNet50 --compile", "imgs_per_s")
fed = value("ResNet50 --compile", "step_loader_imgs_per_s")
if on_gpu and fed:
    lines.append(f"compiled ResNet50 Table 1 step fed by the loader / data on the GPU: {fed:.0f} / "
                 f"{on_gpu:.0f} images/s = {fed / on_gpu:.2f} (goal: at least 0.9)")
else:
    lines.append("loader-fed vs data-on-GPU step: a figure is missing")
old, new = (value("DataLoader alone", k) for k in ("loader_imgs_per_s_old", "loader_imgs_per_s_new"))
if old and new:
    lines.append(f"DataLoader alone, old / new: {old:.0f} / {new:.0f} images/s = {new / old:.2f}x")
seconds = value("SOP-sized", "eval_s")
if seconds:
    lines.append(f"SOP-sized evaluation (kNN + k-means): {seconds:.1f} s (goal: under 3 s)")
print("\n".join(lines))
')"
say "total ${SECONDS}s"
