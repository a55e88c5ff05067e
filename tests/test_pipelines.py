"""Both input pipelines: valid augmentations, every image once per epoch, labels aligned."""

import numpy as np
import pytest
import torch

from archbench.data.datasets import CIFAR10
from archbench.data.pipelines import FastPipeline, InputFormat, ReferencePipeline, build_pipeline, epoch_seed
from conftest import synthetic

N_IMAGES, BATCH = 40, 16  # 40 = 2 full batches + a partial one of 8


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(CIFAR10.mean).view(1, 3, 1, 1), torch.tensor(CIFAR10.std).view(1, 3, 1, 1)
    return (x.cpu() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


def _all_windows(x_hwc: np.ndarray) -> dict[bytes, tuple[int, int, int, bool]]:
    """Every 32x32 crop of every zero-padded image, plain and mirrored -> (image, dy, dx, flip)."""
    padded = np.pad(x_hwc.transpose(0, 3, 1, 2), ((0, 0), (0, 0), (4, 4), (4, 4)))
    table = {}
    for i, img in enumerate(padded):
        for dy in range(9):
            for dx in range(9):
                w = np.ascontiguousarray(img[:, dy : dy + 32, dx : dx + 32])
                table[w.tobytes()] = (i, dy, dx, False)
                table[np.ascontiguousarray(w[:, :, ::-1]).tobytes()] = (i, dy, dx, True)
    return table


@pytest.fixture(scope="module")
def data():
    return synthetic(N_IMAGES, 24, seed=3)


@pytest.fixture(scope="module")
def windows(data):
    return _all_windows(data.x_train)


def _pipeline(name, data, seed=0):
    return build_pipeline(name, data, BATCH, seed, torch.device("cpu"), workers=0)


@pytest.mark.parametrize("name", ["fast", "reference"])
def test_train_batches_are_valid_augmentations_of_each_image_once(name, data, windows):
    pipe = _pipeline(name, data)
    flips, offsets = [], set()
    for epoch in range(8):
        sizes, seen = [], []
        for x, y in pipe.train_batches(epoch):
            assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
            sizes.append(len(y))
            for img, label in zip(_to_uint8(x), y.tolist()):
                hit = windows.get(img.tobytes())
                assert hit is not None, "a training image is not a crop of a zero-padded original"
                i, dy, dx, flip = hit
                assert label == data.y_train[i], "label not aligned with its image"
                seen.append(i)
                flips.append(flip)
                offsets.add((dy, dx))
        assert sizes == [16, 16, 8], "every image once per epoch, the last partial batch included"
        assert sorted(seen) == list(range(N_IMAGES))
    assert 0.4 < np.mean(flips) < 0.6  # 320 draws: 4.5 sigma either side of 0.5
    assert len(offsets) > 40  # of the 81 possible crop positions, most must occur


@pytest.mark.parametrize("name", ["fast", "reference"])
def test_epoch_order_depends_on_seed_and_epoch_only(name, data):
    def labels(pipe, epoch):
        return torch.cat([y for _, y in pipe.train_batches(epoch)]).tolist()

    a, b = _pipeline(name, data, seed=0), _pipeline(name, data, seed=0)
    if name == "reference":
        torch.manual_seed(0)
    first = [torch.cat([x for x, _ in a.train_batches(e)]) for e in (0, 1)]
    if name == "reference":
        torch.manual_seed(0)
    again = [torch.cat([x for x, _ in b.train_batches(e)]) for e in (0, 1)]
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    assert not torch.equal(first[0], first[1])
    assert labels(a, 0) != labels(_pipeline(name, data, seed=1), 0)


def test_test_batches_are_unaugmented_in_order_and_identical_across_pipelines(data):
    fast, ref = _pipeline("fast", data), _pipeline("reference", data)
    xf = torch.cat([x for x, _ in fast.test_batches()])
    xr = torch.cat([x for x, _ in ref.test_batches()])
    yf = torch.cat([y for _, y in fast.test_batches()])
    torch.testing.assert_close(xf, xr, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(_to_uint8(xf), data.x_test.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(yf.numpy(), data.y_test)


def test_fast_pipeline_flip_and_offset_distribution_over_a_large_epoch():
    d = synthetic(4000, 10)
    plan = FastPipeline(d, 128, seed=5, device=torch.device("cpu")).epoch_plan(0)
    assert sorted(plan["order"].tolist()) == list(range(4000))
    assert 0.46 < plan["flip"].float().mean().item() < 0.54
    for k in ("dy", "dx"):
        counts = torch.bincount(plan[k], minlength=9)
        assert len(counts) == 9 and counts.min() > 4000 / 9 * 0.75  # uniform over 0..8


def test_epoch_seed_is_deterministic_and_distinct():
    assert epoch_seed(0, 1) == epoch_seed(0, 1)
    assert len({epoch_seed(s, e) for s in range(5) for e in range(20)}) == 100
    assert all(0 <= epoch_seed(s, e) < 2**63 for s in range(3) for e in range(3))


def test_reference_pipeline_uses_a_dataloader_with_the_study_transforms(data):
    from torchvision import transforms as T

    pipe = ReferencePipeline(data, BATCH, 0, torch.device("cpu"), workers=2)
    tf = pipe.train_loader.dataset.transform.transforms
    assert [type(t) for t in tf] == [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert tf[0].size == (32, 32) and tf[0].padding == 4 and tf[0].fill == 0 and tf[1].p == 0.5
    assert pipe.train_loader.num_workers == 2 and pipe.train_loader.batch_size == BATCH
    assert not pipe.train_loader.drop_last
    # workers seeded from the per-epoch generator: the same epoch twice gives the same batches
    a = torch.cat([x for x, _ in pipe.train_batches(3)])
    b = torch.cat([x for x, _ in pipe.train_batches(3)])
    assert torch.equal(a, b)


def test_fast_batches_come_in_the_models_format_with_the_numbers_autocast_would_give(data, monkeypatch):
    """bf16 channels-last batches are the fp32 ones cast as autocast casts them, however the epoch is built."""
    from archbench.data import pipelines

    cpu = torch.device("cpu")

    def batches(fmt: InputFormat | None = None):
        pipe = FastPipeline(data, BATCH, 0, cpu, fmt or InputFormat())
        return {"train": list(pipe.train_batches(2)), "test": list(pipe.test_batches())}

    assert pipelines.BUILD_CHUNK > N_IMAGES  # each epoch in one piece...
    plain, bf16 = batches(), batches(InputFormat(torch.bfloat16, channels_last=True))
    monkeypatch.setattr(pipelines, "BUILD_CHUNK", 7)  # ...or in chunks that straddle batches
    chunked = batches()
    for name in ("train", "test"):
        got = {"plain": plain[name], "bf16": bf16[name], "chunked": chunked[name]}
        for (x, y), (xb, yb), (xc, yc) in zip(got["plain"], got["bf16"], got["chunked"], strict=True):
            assert x.dtype == torch.float32 and xb.dtype == torch.bfloat16
            assert xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous()
            assert torch.equal(xb, x.to(torch.bfloat16)) and torch.equal(xc, x), name
            assert torch.equal(y, yb) and torch.equal(y, yc)


def test_fast_test_images_are_normalised_once(data):
    pipe = _pipeline("fast", data)
    first = [x for x, _ in pipe.test_batches()]
    again = [x for x, _ in pipe.test_batches()]
    assert [x.data_ptr() for x in first] == [x.data_ptr() for x in again]
