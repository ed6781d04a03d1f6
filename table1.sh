#!/usr/bin/env bash
# Table 1 of the DAS paper (ECCV 2022): multi-similarity loss, 512-d embedding, double pooling,
# normalized, with BN-Inception and ResNet50 on CUB200, CARS196 and SOP; each row as the baseline
# (the paper's re-implementation, MS†) and + DAS with K=8 scaled dimensions.
#
#   bash table1.sh /data                       # all 12 rows, 300 epochs each
#   bash table1.sh /data cub200 resnet50 das   # one row
#   GPU=1 bash table1.sh /data sop             # the SOP rows on CUDA card 1
#   bash table1.sh /data --dry-run             # what would run
#   SMOKE=1 bash table1.sh                     # every row, 1 epoch, tiny data, CPU (a test)
#
# Settings are those of the paper's published table1.sh, except that the CARS196 + ResNet50 row
# trains on CARS196 (the published script trains it on CUB200 by mistake). A baseline row is its
# + DAS row without the DAS options. See docs/TABLES.md; `bash table1.sh --help` for all options.

TABLE=table1
TABLE_TITLE="Table 1 of the DAS paper: multi-similarity, 512-d, BN-Inception / ResNet50, baseline and + DAS"
ROW_HELP="Datasets: cub200 cars196 online_products (cub cars sop); backbones: bninception resnet50; variants: baseline das. Example: cub200 resnet50 das"

# shellcheck source=tools/sweep.sh
source "$(dirname "$0")/tools/sweep.sh"

table_rows() {
  # 300 epochs, lr x0.3 at epochs 200 and 250, Adam (lr 1e-5, weight decay 4e-4), 112 images a
  # batch as 56 classes x 2, seed 0, ImageNet weights, frozen BatchNorm (the arch word "frozen").
  local common=(--source "$DATA_ROOT" --kernels 6 --n_epochs 300 --tau 200 250 --seed 0
    --optim adam --lr 0.00001 --samples_per_class 2 --loss multisimilarity --embed_dim 512)
  local batch=(--bs 112 --decay 0.0004)
  local cub_resnet50_batch=(--bs 180 --decay 0.0008)  # this row only
  local bninception=(--arch bninception_double_frozen_normalize)
  local resnet50=(--arch resnet50_double_frozen_normalize)
  local das=(--embedding_producer_used --produce_type DAS --das_dfs_num_scale 8)
  local narrow_dfs=(--das_dfs_scale_left 0.99 --das_dfs_scale_right 1.01)

  # CUB200
  row cub200 bninception baseline -- \
    --dataset cub200 "${common[@]}" "${batch[@]}" "${bninception[@]}"
  row cub200 bninception das -- \
    --dataset cub200 "${common[@]}" "${batch[@]}" "${bninception[@]}" \
    "${das[@]}" "${narrow_dfs[@]}" --das_mts_scale 0.01 --detach
  row cub200 resnet50 baseline -- \
    --dataset cub200 "${common[@]}" "${cub_resnet50_batch[@]}" "${resnet50[@]}"
  row cub200 resnet50 das -- \
    --dataset cub200 "${common[@]}" "${cub_resnet50_batch[@]}" "${resnet50[@]}" \
    "${das[@]}" "${narrow_dfs[@]}" --das_mts_scale 0.01 --detach

  # CARS196
  row cars196 bninception baseline -- \
    --dataset cars196 "${common[@]}" "${batch[@]}" "${bninception[@]}"
  row cars196 bninception das -- \
    --dataset cars196 "${common[@]}" "${batch[@]}" "${bninception[@]}" \
    "${das[@]}" "${narrow_dfs[@]}" --das_mts_scale 0.01 --detach
  row cars196 resnet50 baseline -- \
    --dataset cars196 "${common[@]}" "${batch[@]}" "${resnet50[@]}"
  row cars196 resnet50 das -- \
    --dataset cars196 "${common[@]}" "${batch[@]}" "${resnet50[@]}" \
    "${das[@]}" "${narrow_dfs[@]}" --das_mts_scale 0.01 --detach

  # SOP: MTS scale 0.1, the default DFS range, no --detach, no train-set metrics.
  row online_products bninception baseline -- \
    --dataset online_products "${common[@]}" "${batch[@]}" "${bninception[@]}" --no_train_metrics
  row online_products bninception das -- \
    --dataset online_products "${common[@]}" "${batch[@]}" "${bninception[@]}" --no_train_metrics \
    "${das[@]}" --das_mts_scale 0.1
  row online_products resnet50 baseline -- \
    --dataset online_products "${common[@]}" "${batch[@]}" "${resnet50[@]}" --no_train_metrics
  row online_products resnet50 das -- \
    --dataset online_products "${common[@]}" "${batch[@]}" "${resnet50[@]}" --no_train_metrics \
    "${das[@]}" --das_mts_scale 0.1
}

run_table "$@"
