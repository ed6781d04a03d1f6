# shellcheck shell=bash
# Shared by table1.sh and table2.sh (sourced, not run): command-line words, DATA_ROOT, SMOKE=1
# data, and the hand-off of the script's rows to tools/sweep.py, which selects, skips,
# continues and runs them. A table script sets TABLE, TABLE_TITLE, ROW_HELP and defines
# table_rows, which prints its rows with `row`.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
SCRIPT_NAME=$(basename "$0")

usage() {
  cat <<EOF
$TABLE_TITLE

usage: bash $SCRIPT_NAME [DATA_ROOT] [ROW WORDS...] [--dry-run | --status] [LAUNCHER OPTIONS]
         [-- MAIN.PY OPTIONS...]

  DATA_ROOT     folder holding cub200/, cars196/, online_products/ (or set DATA_ROOT=...)
  ROW WORDS     choose rows; none = every row. $ROW_HELP
                Words of one kind add rows, words of different kinds narrow them.
  --dry-run     print each row's status, steps and images per epoch and main.py command
  --status      show each row's status (run folders, locks, SLURM queue); run nothing
  MAIN.PY OPTIONS  appended to every row (everything from the first option on, or after --;
                --dry-run is the script's own wherever it stands before a --)

rows at once on this machine (docs/TABLES.md):
  --jobs N          N rows at once; on CPU each gets 1/N of the cores (CPU affinity, threads)
  --gpus 0,1,2,3    GPUs to use (default: CUDA_VISIBLE_DEVICES, or every GPU); one row per GPU
  --per_gpu K       K rows share one GPU
  --gpus_per_row G  one row over G GPUs with torchrun (e.g. the SOP rows)
  --threads_per_row T  torch threads of a CPU row (default: its share of the cores)
rows as SLURM jobs (submitit; requeued at the time limit or on preemption, then continued):
  --slurm           submit every selected row that is not finished, queued or running
  --slurm_partition P  --slurm_time MINUTES  --cpus_per_row C  --mem_gb M
  --slurm_parallel N   at most N rows running at once (job array)
  --slurm_extra KEY=VALUE  any other sbatch option (repeatable), e.g. account=lab
  (--gpus_per_row G: GPUs of each job)

environment:
  DATA_ROOT     as above, when not given as the first argument
  SAVE_PATH     parent of the run folders (default: $REPO_ROOT/Training_Results/$TABLE)
  GPU=N         train on CUDA card N (--gpu N);  DEVICE=cpu|cuda:N  forces a device (--device)
  IN_PROCESS=1  run the rows in one Python process (no per-row start-up; default for SMOKE=1)
  SMOKE=1       every row for 1 epoch on tiny generated data on CPU (a 4-layer CNN stands in
                for the backbone, --crop_size 32 --bs 16 --not_pretrained --kernels 0; every
                other option stays; see docs/TABLES.md)
  SMOKE_DIR     keep the SMOKE data and runs there (default: a temporary folder, removed after)
  SMOKE_BACKBONE  the stand-in backbone for SMOKE=1 (default tinycnn; e.g. resnet18)
  PYTHON        interpreter (default: python)

Run folders are SAVE_PATH/<dataset>_<row>_<baseline|das>. A finished row is skipped, a row with a
checkpoint is continued, so rerunning the same command after a crash or kill picks up where it
stopped. Afterwards: python -m tools.paper_tables --runs SAVE_PATH --out results/$TABLE
EOF
}

# row DATASET KEY VARIANT -- MAIN.PY OPTIONS...: one line for tools/sweep.py
row() {
  printf '%q ' "$@"
  printf '\n'
}

fail() {
  echo "$SCRIPT_NAME: $*" >&2
  echo "run 'bash $SCRIPT_NAME --help' for usage" >&2
  exit 2
}

run_table() {
  local words=() extra=() sweep_flags=() positional=()
  local in_options=0  # after the first main.py option, words are its options and values
  while (($#)); do
    case $1 in
      --dry-run | --dry_run) sweep_flags+=(--dry_run) ;;
      --status | --slurm) sweep_flags+=("$1") ;;
      --jobs | --gpus | --per_gpu | --gpus_per_row | --threads_per_row | --slurm_cluster | \
        --slurm_partition | --slurm_time | --cpus_per_row | --mem_gb | --slurm_parallel | \
        --slurm_signal_delay | --slurm_max_timeouts | --slurm_extra | --slurm_name)
        (($# > 1)) || fail "$1 expects a value"
        sweep_flags+=("$1" "$2")
        shift
        ;;
      --jobs=* | --gpus=* | --per_gpu=* | --gpus_per_row=* | --threads_per_row=* | \
        --slurm_*=* | --cpus_per_row=* | --mem_gb=*) sweep_flags+=("$1") ;;
      --) shift; extra+=("$@"); break ;;
      *)
        if ((in_options)); then
          extra+=("$1")
        else
          case $1 in
            -h | --help) usage; exit 0 ;;
            -n) sweep_flags+=(--dry_run) ;;
            -*) in_options=1; extra+=("$1") ;;
            *) positional+=("$1") ;;
          esac
        fi
        ;;
    esac
    shift
  done
  if ((${#positional[@]})) && { [[ -d ${positional[0]} ]] || [[ ${positional[0]} == */* ]]; }; then
    DATA_ROOT=${positional[0]}
    positional=("${positional[@]:1}")
  fi
  words=("${positional[@]}")
  if [[ -n ${GPU:-} ]]; then extra+=(--gpu "$GPU"); fi
  if [[ -n ${DEVICE:-} ]]; then extra+=(--device "$DEVICE"); fi
  if [[ ${IN_PROCESS:-0} == 1 ]]; then sweep_flags+=(--in_process); fi

  if [[ ${SMOKE:-0} == 1 ]]; then
    local smoke_dir=${SMOKE_DIR:-}
    if [[ -z $smoke_dir ]]; then
      smoke_dir=$(mktemp -d "${TMPDIR:-/tmp}/das_smoke.XXXXXX")
      # shellcheck disable=SC2064  # expand now: the folder is fixed
      trap "rm -rf '$smoke_dir'" EXIT
    fi
    DATA_ROOT=$smoke_dir/data
    if [[ ! -d $DATA_ROOT/online_products ]]; then
      "$PYTHON" -m tools.smoke_data "$DATA_ROOT" \
        --datasets cub200 cars196 online_products >/dev/null
    fi
    SAVE_PATH=${SAVE_PATH:-$smoke_dir/runs/$TABLE}
    sweep_flags+=(--smoke)
    if [[ -n ${SMOKE_BACKBONE:-} ]]; then sweep_flags+=(--smoke_backbone "$SMOKE_BACKBONE"); fi
    echo "SMOKE=1: tiny data in $DATA_ROOT, runs in $SAVE_PATH"
  fi

  if [[ -z ${DATA_ROOT:-} ]]; then
    fail "no DATA_ROOT: give the folder holding cub200/, cars196/, online_products/ as the first" \
      "argument or set DATA_ROOT=... (SMOKE=1 generates tiny data instead)"
  fi
  [[ -e $DATA_ROOT ]] || fail "DATA_ROOT '$DATA_ROOT' does not exist; expected the folder holding" \
    "cub200/, cars196/, online_products/"
  [[ -d $DATA_ROOT ]] || fail "DATA_ROOT '$DATA_ROOT' is a file; expected the folder holding" \
    "cub200/, cars196/, online_products/"
  DATA_ROOT=$(cd "$DATA_ROOT" && pwd)
  SAVE_PATH=${SAVE_PATH:-$REPO_ROOT/Training_Results/$TABLE}

  table_rows | "$PYTHON" -m tools.sweep --script "$SCRIPT_NAME" --save_path "$SAVE_PATH" \
    --select "${words[@]}" "${sweep_flags[@]}" -- "${extra[@]}"
}
