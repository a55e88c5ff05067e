"""Two input pipelines behind one interface: ``train_batches(epoch)`` and ``test_batches()``.

- ``fast``: the uint8 dataset lives on the training device; each epoch draws one
  permutation, per-image crop offsets and flips there, and builds the whole epoch's
  augmented, normalised images at once, in the dtype and memory format the model takes
  them in (``InputFormat``); a batch is then a slice — no per-image Python, no
  host-to-device copies, no per-step gathers or casts. The test images are normalised
  once.
- ``reference``: the study's torchvision transforms on PIL images behind a DataLoader,
  kept to check the fast path against.

Both implement the study's augmentation: zero-padded RandomCrop(32, padding=4) and
RandomHorizontalFlip(0.5), then Normalize with the dataset's own mean and std; test images
are only normalised.
Every training image is seen exactly once per epoch, the last partial batch included.
The order and augmentation of epoch e are seeded from (seed, e) (for ``reference`` with
workers; with ``workers=0`` its transforms draw from the global RNG, which checkpoints
keep), so a resumed run replays them exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from archbench.data.sources import CifarData

PAD = 4  # pixels of zero padding before the 32x32 random crop
SIZE = 32
# Evaluation is per image (BN in eval mode), so its batch size only trades memory for
# kernel launches; the fast pipeline evaluates in batches of at least this many images.
FAST_EVAL_BATCH = 500
# Images augmented and normalised per kernel launch while an epoch is built: bounds the
# float32 intermediate at 8192 x 3 x 32 x 32 x 4 bytes = 96 MiB.
BUILD_CHUNK = 8192

Batch = tuple[torch.Tensor, torch.Tensor]


class Pipeline(Protocol):
    train_size: int
    test_size: int
    eval_batch_size: int

    def train_batches(self, epoch: int) -> Iterator[Batch]: ...

    def test_batches(self) -> Iterator[Batch]: ...


@dataclass(frozen=True)
class InputFormat:
    """How the fast pipeline hands images to the model.

    ``bfloat16`` is what bf16 autocast would cast a float32 batch to before the first
    convolution (the same rounding), so casting once per epoch changes no number;
    ``channels_last`` is the layout the model's convolutions run in on CUDA.
    """

    dtype: torch.dtype = torch.float32
    channels_last: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for one epoch's data order and augmentation."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


class FastPipeline:
    def __init__(
        self, data: CifarData, batch_size: int, seed: int, device: torch.device, fmt: InputFormat = InputFormat()
    ):
        self.batch_size, self.seed, self.device, self.fmt = batch_size, seed, torch.device(device), fmt
        self.eval_batch_size = max(batch_size, FAST_EVAL_BATCH)

        def to_nchw(x):
            return torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).contiguous()

        # Padded once: every crop is then a 32x32 window of this 40x40 image.
        self.x_train_padded = F.pad(to_nchw(data.x_train), (PAD,) * 4)
        self.y_train = torch.from_numpy(data.y_train).to(self.device)
        self.x_test = to_nchw(data.x_test)
        self.y_test = torch.from_numpy(data.y_test).to(self.device)
        self.train_size, self.test_size = len(data.y_train), len(data.y_test)
        self._mean = torch.tensor(data.info.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(data.info.std, device=self.device).view(1, 3, 1, 1)
        self._window = torch.arange(SIZE, device=self.device)
        self._channels = torch.arange(3, device=self.device).view(1, 3, 1, 1)
        self._test_images: torch.Tensor | None = None  # normalised on first use, then kept

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return x_uint8.float().div_(255.0).sub_(self._mean).div_(self._std)  # in place: one float32 copy

    def crop_flip(self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """uint8 crops of padded images ``idx`` at offsets (dy, dx), mirrored where ``flip``."""
        rows = dy[:, None] + self._window
        cols = torch.where(flip[:, None], dx[:, None] + (SIZE - 1) - self._window, dx[:, None] + self._window)
        return self.x_train_padded[
            idx.view(-1, 1, 1, 1), self._channels, rows[:, None, :, None], cols[:, None, None, :]
        ]

    def epoch_plan(self, epoch: int) -> dict[str, torch.Tensor]:
        """The epoch's order and augmentation parameters, drawn at once on the device."""
        g = torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, epoch))
        n, span = self.train_size, 2 * PAD + 1
        return {
            "order": torch.randperm(n, generator=g, device=self.device),
            "dy": torch.randint(0, span, (n,), generator=g, device=self.device),
            "dx": torch.randint(0, span, (n,), generator=g, device=self.device),
            "flip": torch.randint(0, 2, (n,), generator=g, device=self.device).bool(),
        }

    def _formatted(self, n: int, images: Callable[[slice], torch.Tensor]) -> torch.Tensor:
        """``n`` normalised images in ``fmt``, built ``BUILD_CHUNK`` at a time from ``images(slice)`` (uint8)."""
        shape = (n, 3, SIZE, SIZE)
        out = torch.empty(shape, dtype=self.fmt.dtype, device=self.device, memory_format=self.fmt.memory_format)
        for s in range(0, n, BUILD_CHUNK):
            sl = slice(s, s + BUILD_CHUNK)
            out[sl] = self.normalize(images(sl))  # the cast rounds to nearest, as autocast's does
        return out

    def epoch_images(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Epoch ``epoch``'s training images, augmented and normalised, in batch order, and their labels."""
        plan = self.epoch_plan(epoch)
        order = plan["order"]
        x = self._formatted(
            self.train_size, lambda sl: self.crop_flip(order[sl], plan["dy"][sl], plan["dx"][sl], plan["flip"][sl])
        )
        return x, self.y_train[order]

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        x, y = self.epoch_images(epoch)
        for s in range(0, self.train_size, self.batch_size):
            yield x[s : s + self.batch_size], y[s : s + self.batch_size]

    def test_batches(self) -> Iterator[Batch]:
        if self._test_images is None:
            self._test_images = self._formatted(self.test_size, lambda sl: self.x_test[sl])
        b = self.eval_batch_size
        for s in range(0, self.test_size, b):
            yield self._test_images[s : s + b], self.y_test[s : s + b]


def test_pipeline(
    data: CifarData, batch_size: int, device: torch.device, fmt: InputFormat = InputFormat()
) -> FastPipeline:
    """A pipeline for evaluation only: the test set on the device, no training copy."""
    test_only = dataclasses.replace(data, x_train=data.x_train[:0], y_train=data.y_train[:0])
    return FastPipeline(test_only, batch_size, seed=0, device=device, fmt=fmt)


class _ArrayImages(torch.utils.data.Dataset):
    """uint8 HWC arrays served as PIL images through a torchvision transform."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


class ReferencePipeline:
    def __init__(self, data: CifarData, batch_size: int, seed: int, device: torch.device, workers: int = 2):
        from torchvision import transforms as T

        self.seed, self.device = seed, torch.device(device)
        normalize = [T.ToTensor(), T.Normalize(data.info.mean, data.info.std)]
        train_tf = T.Compose([T.RandomCrop(SIZE, padding=PAD), T.RandomHorizontalFlip(), *normalize])
        self._generator = torch.Generator()

        def loader(ds, shuffle):
            return torch.utils.data.DataLoader(
                ds,
                batch_size=batch_size,
                shuffle=shuffle,
                num_workers=workers,
                generator=self._generator if shuffle else None,
                pin_memory=self.device.type == "cuda",
            )

        self.train_loader = loader(_ArrayImages(data.x_train, data.y_train, train_tf), True)
        self.test_loader = loader(_ArrayImages(data.x_test, data.y_test, T.Compose(normalize)), False)
        self.train_size, self.test_size = len(data.y_train), len(data.y_test)
        self.eval_batch_size = batch_size

    def _to_device(self, loader) -> Iterator[Batch]:
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        # The shuffle order and the workers' transform seeds both come from this generator.
        self._generator.manual_seed(epoch_seed(self.seed, epoch))
        return self._to_device(self.train_loader)

    def test_batches(self) -> Iterator[Batch]:
        return self._to_device(self.test_loader)


def build_pipeline(
    name: str,
    data: CifarData,
    batch_size: int,
    seed: int,
    device: torch.device,
    workers: int = 2,
    fmt: InputFormat = InputFormat(),
) -> Pipeline:
    """``fmt`` is the fast pipeline's; the reference one hands over torchvision's float32 NCHW tensors."""
    if name == "fast":
        return FastPipeline(data, batch_size, seed, device, fmt)
    if name == "reference":
        return ReferencePipeline(data, batch_size, seed, device, workers)
    raise ValueError(f"unknown pipeline {name!r}")
