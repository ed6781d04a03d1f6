"""Every loss/miner pair of table2.sh runs one main.py epoch with DAS on generated data (the
criteria on real + generated rows, inside the real training loop), in-process to skip start-up."""
from __future__ import annotations

import csv
import math
import os

import pytest

import main
from architectures import parse_arch, with_backbone
from tools.paper_tables import TABLE2_METHODS

# (loss, miner options, arch) of table2.sh's methods (tools/table2_methods.tsv), the backbone
# swapped for tinycnn as in SMOKE sweeps; lifted and N-pair train unnormalized.
TABLE2_PAIRS = [
    pytest.param(m.loss, ["--batch_mining", m.batch_mining] if m.batch_mining else [],
                 with_backbone(m.arch, "tinycnn"), id=m.name)
    for m in TABLE2_METHODS]


@pytest.mark.parametrize("loss,miner,arch", TABLE2_PAIRS)
def test_table2_pair_runs_one_epoch_with_das(loss, miner, arch, tiny_folder, tmp_path):
    das = ["--embedding_producer_used", "--produce_type", "DAS", "--detach"]
    if not parse_arch(arch).normalize:
        das.append("--das_not_normalize")
    folder = main.main([
        "--dataset", "folder", "--source", str(tiny_folder), "--n_epochs", "1", "--bs", "8",
        "--samples_per_class", "2", "--arch", arch, "--not_pretrained", "--crop_size", "16",
        "--kernels", "0", "--embed_dim", "16", "--loss", loss, *miner,
        "--save_path", str(tmp_path), "--savename", "run", "--evaluation_metrics", "recall@1",
        *das])
    with open(os.path.join(folder, "metrics.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    last = rows[-1]
    assert math.isfinite(float(last["loss"]))
    tuples = float(last["stats/criterion/tuples"])
    with_generated = float(last["stats/criterion/tuples_with_generated"])
    assert 0 < with_generated <= tuples


@pytest.mark.parametrize("extra,message", [
    (["--loss", "lifted", "--batch_mining", "semihard"],
     "error: criterion 'lifted' does not accept --batch_mining semihard; accepted: lifted"),
    (["--loss", "triplet", "--batch_mining", "npair"],
     "error: criterion 'triplet' does not accept --batch_mining npair; accepted: random, semihard, "
     "softhard, distance, rho_distance, parametric, intra_random, random_distance"),
    (["--loss", "triplet", "--batch_mining", "hardest"],
     "error: unknown batch miner 'hardest' for --batch_mining; valid names: distance, "),
])
def test_start_up_refuses_a_miner_with_one_line(extra, message, tiny_folder, tmp_path, capsys):
    code = main.run(["--dataset", "folder", "--source", str(tiny_folder), "--n_epochs", "1",
                     "--bs", "8", "--samples_per_class", "2", "--arch", "tinycnn_normalize",
                     "--not_pretrained", "--crop_size", "16", "--kernels", "0",
                     "--save_path", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(message) and "Traceback" not in err
