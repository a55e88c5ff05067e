"""The datasets archbench trains on: what each one is, where it comes from, how it is normalised.

One ``DatasetInfo`` per dataset holds everything that differs between CIFAR-10 and CIFAR-100:
class names, per-channel normalisation statistics, the official archive (URL, file names,
MD5s) and the key its batches store labels under. Every other part of archbench asks the
dataset for these instead of assuming ten classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from archbench.errors import ArchbenchError


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # as on the command line: --dataset NAME
    title: str  # as in messages and reports
    classes: tuple[str, ...]
    # Per-channel mean and standard deviation of the training images, pixel values in [0, 1].
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    url: str  # the official "python version" archive
    archive: str  # its file name
    folder: str  # the folder it unpacks to
    archive_md5: str
    train_files: tuple[str, ...]  # batch files inside the folder, in the official order
    test_file: str
    file_md5: Mapping[str, str]
    label_key: str  # the batches' label list ("labels"; CIFAR-100's fine labels: "fine_labels")
    archive_mb: int  # download size, for messages about disk space

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def url_var(self) -> str:
        """The environment variable naming a mirror of the official archive."""
        return f"ARCHBENCH_{self.name.upper()}_URL"


CIFAR10 = DatasetInfo(
    name="cifar10",
    title="CIFAR-10",
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    file_md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    label_key="labels",
    archive_mb=170,
)

# The 100 fine classes, in label order (alphabetical, as the archive's meta file lists them).
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()

CIFAR100 = DatasetInfo(
    name="cifar100",
    title="CIFAR-100",
    classes=tuple(CIFAR100_CLASSES),
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_file="test",
    file_md5={"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
    label_key="fine_labels",
    archive_mb=169,
)

DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (CIFAR10, CIFAR100)}
DEFAULT = CIFAR10.name


def get(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ArchbenchError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]
