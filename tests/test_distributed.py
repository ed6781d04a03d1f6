"""torchrun semantics on CPU: two gloo processes, each holding half of a fixed global batch, take
the same training step as one process holding all of it (loss, gradients, update; with and
without DAS)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import architectures
import criteria
from das import build_producer
from evaluation import sharded_embeddings
from parameters import parse_options
from training.build import make_optimizer
from training.loop import training_step
from utilities import distributed

WORLD = 2
CLASSES = 8


def options(das: bool):
    argv = ["--loss", "multisimilarity", "--optim", "sgd", "--lr", "0.05", "--decay", "0",
            "--embed_dim", "16", "--bs", "16", "--samples_per_class", "2"]
    if das:
        argv += ["--embedding_producer_used", "--das_dfs_num_scale", "3", "--das_num_produce", "2",
                 "--das_mts_scale", "0.5"]
    return parse_options(argv)


def global_batch():
    generator = torch.Generator().manual_seed(123)
    images = torch.randn(2 * CLASSES, 3, 32, 32, generator=generator)
    labels = torch.arange(CLASSES).repeat_interleave(2)  # class pairs: halves share no class
    return images, labels


def take_step(model_for_step, model, das_on: bool, images, labels):
    """One training_step; returns (loss, flat gradient, flat parameters after the update)."""
    opt = options(das_on)
    criterion = criteria.select("multisimilarity", opt, num_classes=CLASSES)
    das = build_producer(opt, num_classes=CLASSES)
    if das is not None:
        warm_images, warm_labels = global_batch()
        with torch.no_grad():  # a warm MTS bank, so that the shift draws matter
            das(model(warm_images), warm_labels)
    optimizer = make_optimizer(opt, model, criterion)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])  # noqa: E501
    torch.manual_seed(7)  # the same DAS draws in every process
    loss = training_step(model_for_step, criterion, das, optimizer, images, labels,
                         torch.device("cpu"), use_amp=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    return loss.detach(), before, after


def build_model():
    torch.manual_seed(0)
    return architectures.select("resnet18_frozen_normalize", 16, pretrained=False).train()


def rank_main(rank: int, init_file: str, das_on: bool, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = build_model()
        ddp_model = distributed.wrap_model(model, torch.device("cpu"))
        images, labels = global_batch()
        local = slice(rank * len(labels) // WORLD, (rank + 1) * len(labels) // WORLD)
        loss, before, after = take_step(ddp_model, model, das_on, images[local], labels[local])
        torch.save({"loss": loss, "before": before, "after": after}, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("das_on", [False, True], ids=["plain", "das"])
def test_two_gloo_ranks_take_the_same_step_as_one_process(tmp_path, das_on):
    torch.set_num_threads(1)
    model = build_model()
    images, labels = global_batch()
    loss, before, after = take_step(model, model, das_on, images, labels)

    out_file = str(tmp_path / "rank")
    mp.spawn(rank_main, args=(str(tmp_path / "init"), das_on, out_file), nprocs=WORLD, join=True)
    results = [torch.load(f"{out_file}.{r}", weights_only=True) for r in range(WORLD)]
    for result in results:
        assert torch.equal(result["before"], before)
        assert torch.allclose(result["loss"], loss, rtol=1e-5, atol=1e-6)
        update, reference = result["after"] - result["before"], after - before
        assert reference.abs().max() > 0
        assert torch.allclose(update, reference, rtol=1e-4, atol=1e-7)
    assert torch.equal(results[0]["after"], results[1]["after"])


def test_gather_keeps_the_gradient_of_the_local_rows_only_without_a_process_group():
    rows = torch.randn(4, 3, requires_grad=True)
    labels = torch.arange(4)
    gathered, gathered_labels = distributed.gather_with_grad(rows, labels)
    assert gathered is rows and gathered_labels is labels and distributed.loss_scale() == 1.0
    assert not os.environ.get("WORLD_SIZE") or os.environ["WORLD_SIZE"] == "1"


class TinyImages(torch.utils.data.Dataset):
    """7 images (an odd count, so the two shards differ in size) with labels."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(5)
        self.images = torch.randn(7, 3, 32, 32, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index % 3, index


def embedding_rank_main(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        embeddings, labels = sharded_embeddings(build_model(), TinyImages(),
                                                torch.device("cpu"), 2, 0)
        if rank == 0:
            torch.save({"embeddings": torch.from_numpy(embeddings),
                        "labels": torch.from_numpy(labels)}, out_file)
        else:
            assert embeddings is None and labels is None
    finally:
        dist.destroy_process_group()


def test_sharded_evaluation_embeddings_equal_the_single_process_ones(tmp_path):
    from evaluation import compute_embeddings

    torch.set_num_threads(1)
    expected, expected_labels = compute_embeddings(build_model(), TinyImages(), "cpu", 2, 0)
    out_file = str(tmp_path / "embeddings.pt")
    mp.spawn(embedding_rank_main, args=(str(tmp_path / "init"), out_file), nprocs=WORLD, join=True)
    result = torch.load(out_file, weights_only=True)
    assert torch.equal(result["labels"], torch.from_numpy(expected_labels))
    assert torch.allclose(result["embeddings"], torch.from_numpy(expected), atol=1e-6)
