#!/usr/bin/env bash
# Table 2 of the DAS paper (ECCV 2022): seven losses with ResNet50 and the default 128-d
# embedding on CUB200, CARS196 and SOP; each row as the baseline and + DAS (default K=4).
#
#   bash table2.sh /data                       # all 42 rows, 300 epochs each
#   bash table2.sh /data cub200 margin das     # one row
#   bash table2.sh /data triplet baseline      # both triplet miners, baseline, every dataset
#   GPU=1 bash table2.sh /data sop             # the SOP rows on CUDA card 1
#   bash table2.sh /data --dry-run             # what would run
#   SMOKE=1 bash table2.sh                     # every row, 1 epoch, tiny data, CPU (a test)
#
# Settings are those of the paper's published table2.sh. A baseline row is its + DAS row without
# the DAS options. See docs/TABLES.md; `bash table2.sh --help` for all options.

TABLE=table2
TABLE_TITLE="Table 2 of the DAS paper: seven losses, ResNet50 128-d, baseline and + DAS"
# shellcheck source=tools/sweep.sh
source "$(dirname "$0")/tools/sweep.sh"

# The methods (name, loss, miner, arch) are listed once, in tools/table2_methods.tsv; see its
# header. Embeddings are L2-normalized except for the generalized lifted and N-pair losses, whose
# + DAS rows also leave the generated rows unnormalized.
METHODS_FILE=$REPO_ROOT/tools/table2_methods.tsv
METHODS=() LOSSES=() MINERS=() ARCHES=()
line_number=0
while IFS=$'\t' read -r method loss miner arch label; do
  line_number=$((line_number + 1))
  if [[ -z $method || $method == '#'* ]]; then continue; fi
  [[ -n $label ]] || fail "$METHODS_FILE line $line_number: expected 5 tab-separated columns" \
    "(method, loss, batch_mining, arch, label)"
  METHODS+=("$method") LOSSES+=("$loss") MINERS+=("$miner") ARCHES+=("$arch")
done <"$METHODS_FILE"
unset line_number method loss miner arch label

ROW_HELP="Datasets: cub200 cars196 online_products (cub cars sop); methods: ${METHODS[*]} (or a part: triplet, semihard, distance); variants: baseline das. Example: cub200 margin das"

# The loss, its miner and the arch of method number $1 ("-": no --batch_mining, the loss's own).
method_options() {
  options=(--loss "${LOSSES[$1]}")
  if [[ ${MINERS[$1]} != - ]]; then options+=(--batch_mining "${MINERS[$1]}"); fi
  options+=(--arch "${ARCHES[$1]}")
}

# The + DAS options of a (dataset, method) row, as in the paper's published script.
das_options() {
  local dataset=$1 method=$2
  local narrow_dfs=(--das_dfs_scale_left 0.99 --das_dfs_scale_right 1.01)
  options=(--embedding_producer_used --produce_type DAS)
  case $method in
    lifted | npair) options+=(--das_not_normalize) ;;
  esac
  if [[ $dataset != online_products ]]; then
    options+=("${narrow_dfs[@]}" --detach)  # CUB200, CARS196: every method
    return
  fi
  case $method in  # SOP
    triplet_semihard | triplet_distance) options+=(--das_mts_scale 0.1 --aux_loss --detach) ;;
    contrastive | multisimilarity) options+=(--das_mts_scale 0.1) ;;
    margin) ;;  # the DAS defaults
    lifted | npair) options+=("${narrow_dfs[@]}" --das_mts_scale 0.1) ;;
    *) fail "no + DAS options for method '$method'" ;;
  esac
}

table_rows() {
  # 300 epochs, lr x0.3 at epochs 200 and 250, Adam (lr 1e-5, weight decay 4e-4), 112 images a
  # batch as 56 classes x 2, seed 0, ImageNet weights, frozen BatchNorm (the arch word "frozen"),
  # the default --embed_dim 128.
  local common=(--source "$DATA_ROOT" --kernels 6 --n_epochs 300 --tau 200 250 --seed 0
    --optim adam --lr 0.00001 --decay 0.0004 --bs 112 --samples_per_class 2 --embed_dim 128)
  local dataset index method options=() baseline=()
  for dataset in cub200 cars196 online_products; do
    for index in "${!METHODS[@]}"; do
      method=${METHODS[index]}
      method_options "$index"
      baseline=(--dataset "$dataset" "${common[@]}" "${options[@]}")
      row "$dataset" "$method" baseline -- "${baseline[@]}"
      das_options "$dataset" "$method"
      row "$dataset" "$method" das -- "${baseline[@]}" "${options[@]}"
    done
  done
}

run_table "$@"
