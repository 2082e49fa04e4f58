"""Image classification data: ``prepare_images`` (folder tree -> litdata chunks) and ``ImageDataModule``.

A prepared directory holds ``train/`` and ``val/`` litdata chunks of ``{"image": encoded bytes,
"label": int, "source": str}`` (the original JPEG/PNG bytes: nothing is re-encoded; ``source`` is the
file's path relative to the folder tree, or ``<part>[<index>]`` for built-ins) and ``lit_ortho.json`` (classes).
Images are decoded with PIL and augmented with timm's transforms in the DataLoader workers; mixup and
cutmix (timm) run on the batch after it reaches the device.

Built-in data sets, prepared on first use under ``$LIT_ORTHO_CACHE`` (default ``~/.cache/lit_ortho``):

* ``digits``: the 1,797 handwritten digits (8x8 grey, 10 classes, from UCI "optdigits") that ship
  inside scikit-learn, so a ConvNeXt trains with no network at all. Every fifth image is validation.
* ``cifar10``: downloaded once through torchvision (the 50,000 / 10,000 official split).
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import lightning as L
import torch

# litdata is imported after lit_ortho.data._common (lit_ortho/data/__init__.py imports it first): see there
from litdata import StreamingDataset

from lit_ortho.data._common import (
    DataError,
    EpochStreamingDataLoader,
    build_and_replace,
    build_once,
    cache_root,
    check_choice,
    check_chunks,
    check_not_overlapping,
    check_output_dir,
    check_val_fraction,
    default_workers,
    lightning_batches_done,
    load_meta,
    new_meta,
    read_meta,
    run_optimize,
    skip_or_refuse,
    some,
    write_meta,
)

__all__ = [
    "ImageDataModule",
    "ImageStreamingDataset",
    "prepare_images",
    "prepare_builtin_images",
    "builtin_images_dir",
    "scan_image_folder",
    "IMAGE_DATASETS",
    "DEFAULT_IMAGE_DATASET",
    "IMAGE_CHUNK_BYTES",
    "IMAGE_VAL_FRACTION",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")
IMAGE_CHUNK_BYTES = "256MB"  # default litdata chunk size of prepare_images
IMAGE_VAL_FRACTION = 0.1  # default held-out share of a folder tree without train/ and val/
BUILTIN_CHUNK_BYTES = "64MB"  # litdata chunk size of the built-in data sets
PREPARE_IMAGES_HINT = "lit-ortho prepare-images <image folder tree> --output-dir <dir>"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---- folder trees ---------------------------------------------------------------------------------
def _class_folders(root: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """``({class: image files}, names of class folders without any image)`` of ``root/<class>/**``."""
    classes, empty = {}, []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes[d.name] = files
        else:
            empty.append(d.name)
    return classes, empty


def _scan(root: str, val_fraction: float) -> tuple[list[str], dict[str, list[tuple[str, int]]], list[str], list[str]]:
    """:func:`scan_image_folder` plus what it leaves out: ``(classes, splits, empty class folders, files not read)``.

    Empty class folders are those that would have been classes (``root/<class>`` or ``root/train/<class>``);
    files not read are every file under ``root`` (relative paths) that is in neither split.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"image folder not found: {str(root_path)!r}")
    if (root_path / "train").is_dir():
        train, empty = _class_folders(root_path / "train")
        val = _class_folders(root_path / "val")[0] if (root_path / "val").is_dir() else {}
        if not train:
            raise DataError(f"no class folders with images under {str(root_path / 'train')!r} (expected train/<class>/<image>)")
        empty = [f"train/{c}" for c in empty]
        classes = sorted(train)
        unknown = sorted(set(val) - set(classes))
        if unknown:
            raise DataError(f"{str(root_path / 'val')!r} has classes missing from train/: {unknown[:5]}")
        label = {c: i for i, c in enumerate(classes)}
        splits = {
            "train": [(str(p), label[c]) for c in classes for p in train[c]],
            "val": [(str(p), label[c]) for c in sorted(val) for p in val[c]],
        }
    else:
        tree, empty = _class_folders(root_path)
        if not tree:
            raise DataError(
                f"no images found under {str(root_path)!r}: expected <root>/<class>/<image> or "
                f"<root>/train/<class>/<image> with suffixes {', '.join(IMAGE_SUFFIXES)}"
            )
        classes = sorted(tree)
        splits = {"train": [], "val": []}
        for i, c in enumerate(classes):
            for p in tree[c]:
                rel = str(p.relative_to(root_path))
                is_val = zlib.crc32(rel.encode()) / 2**32 < val_fraction
                splits["val" if is_val else "train"].append((str(p), i))
    if len(classes) < 2:
        raise DataError(f"{str(root_path)!r} has {len(classes)} class folder(s); classification needs at least 2")
    read = {path for items in splits.values() for path, _ in items}
    unread = sorted(str(p.relative_to(root_path)) for p in root_path.rglob("*") if p.is_file() and str(p) not in read)
    return classes, splits, empty, unread


def scan_image_folder(root: str, val_fraction: float = IMAGE_VAL_FRACTION) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Read an ImageNet-style tree into ``(classes, {"train": [(path, label)], "val": [...]})``.

    ``root/train/<class>/*`` and ``root/val/<class>/*`` give the two splits; otherwise ``root/<class>/*``
    is split with a stable hash of each file's path (``val_fraction`` to validation). Folders whose name
    starts with ``.`` are not classes; files with other suffixes than ``IMAGE_SUFFIXES`` are not read
    (:func:`prepare_images` reports both).
    """
    return _scan(root, val_fraction)[:2]


def _item(image: bytes, label: Any, source: str) -> dict[str, Any]:
    """One stored item: the encoded image, its class index and where it came from (what
    ImageStreamingDataset decodes; ``source`` names the sample in decode errors)."""
    return {"image": image, "label": int(label), "source": str(source)}


def _decode(data: bytes):
    """The RGB image of encoded bytes, decoded fully (as training does)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


class _ReadImageFile:
    """``litdata.optimize`` function: ``(path, label)`` -> the file's bytes, stored with its path relative
    to ``root``. Each image is verified and decoded fully (``verify()`` alone misses truncated files)."""

    def __init__(self, root: str):
        self.root = str(root)

    def __call__(self, item: tuple[str, int]) -> dict[str, Any]:
        from PIL import Image

        path, label = item
        try:
            data = Path(path).read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                img.verify()  # structure and checksums
            _decode(data)  # every pixel: truncated or corrupt scan data fails here
        except Exception as err:
            raise DataError(f"cannot read image {path!r}: {type(err).__name__}: {err}".replace("\n", " ")) from None
        return _item(data, label, os.path.relpath(path, self.root))


def _write_splits(scratch: Path, fn: Any, splits: dict[str, list], classes: list[str], source: str, num_workers: int, chunk_bytes: str, verbose: bool) -> dict:
    counts = {}
    for split, items in splits.items():
        if not items:
            continue
        summary = run_optimize(fn, items, scratch / split, num_workers=num_workers, chunk_bytes=chunk_bytes, verbose=verbose)
        if summary is None:
            raise DataError(f"no images were written for the {split} split of {source}")
        counts[split] = {"images": summary["items"]}
    meta = new_meta("images", classes=classes, num_classes=len(classes), splits=counts, source=source)
    write_meta(scratch, meta)
    return meta


def prepare_images(
    root: str,
    output_dir: str,
    val_fraction: float = IMAGE_VAL_FRACTION,
    num_workers: Optional[int] = None,
    chunk_bytes: str = IMAGE_CHUNK_BYTES,
    overwrite: bool = False,
    verbose: bool = True,
    strict: bool = False,
) -> dict:
    """Pack an ImageNet-style folder tree into litdata chunks (original bytes kept) under ``output_dir``.

    See :func:`scan_image_folder` for the layouts. Returns the metadata written to ``output_dir/lit_ortho.json``.

    Guarantees:

    * ``root`` is only read. An ``output_dir`` that is, contains or lies inside ``root`` (symlinks
      resolved) is refused before anything is touched; the error names both paths.
    * The output is built in a scratch directory beside ``output_dir`` (``.<name>.tmp-*``) and renamed into
      place only once complete. With ``overwrite`` a previous output (a directory holding ``lit_ortho.json``;
      any other non-empty directory is refused) stays intact until then: it is renamed aside, the new one
      renamed into place, then the old one deleted, so at any moment a complete old or new directory
      exists. On any failure the previous output is unchanged, the scratch directory is removed, and
      the error names ``output_dir``.
    * Every image is decoded fully, as training will decode it: an unreadable, corrupt or truncated file
      is a :class:`DataError` naming it. Each sample stores its path relative to ``root``, and a decode
      error at training time names it.
    * Nothing is dropped silently: class folders without images (which would silently remove a class) and
      files that are not read (unsupported suffixes such as ``.jfif`` or ``.heic``, files outside class
      folders, folders other than ``train/`` and ``val/`` in a split tree, hidden folders) are reported in
      a :class:`~lit_ortho.data.DataWarning` that names the first few and counts them. With ``strict``
      each is a :class:`DataError` instead, raised before any output is written.
    """
    check_val_fraction(val_fraction)
    check_not_overlapping(output_dir, [root])  # before reading anything
    classes, splits, empty, unread = _scan(root, val_fraction)
    if not splits["train"]:
        raise DataError(f"no training images under {root!r}")
    out = check_output_dir(output_dir, overwrite, [root])
    if empty:
        skip_or_refuse(
            f"{len(empty):,} class folder(s) under {str(root)!r} hold no images and are left out "
            f"({len(classes)} classes remain): {some(empty)}",
            strict,
        )
    if unread:
        skip_or_refuse(
            f"{len(unread):,} file(s) under {str(root)!r} are not read (images need the suffixes {', '.join(IMAGE_SUFFIXES)} "
            f"and a class folder): {some(unread)}",
            strict,
        )
    workers = num_workers or default_workers()
    fn = _ReadImageFile(str(Path(root).expanduser()))
    build_and_replace(out, lambda scratch: _write_splits(scratch, fn, splits, classes, str(root), workers, chunk_bytes, verbose))
    return load_meta(out)


# ---- built-in data sets ------------------------------------------------------------------------------
def _load_digits(part: str = "digits"):
    """scikit-learn's 8x8 digits as uint8 images and labels (``part`` is ignored: there is one)."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    return images, digits.target


def _load_cifar_batch(path: Path):
    import numpy as np

    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(data), list(batch[b"labels"])
    except Exception as err:
        raise DataError(f"cannot read CIFAR-10 batch {str(path)!r}: {err}") from None


def _load_cifar_part(folder: str, part: str):
    return _load_cifar_batch(Path(folder) / part)


class _EncodeArrays:
    """``litdata.optimize`` function for in-memory data sets: ``(part, indices)`` -> PNG-encoded items.

    ``load(part)`` returns ``(images, labels)`` of one part (a module-level function or a partial of
    one, so that spawned workers can unpickle it).
    """

    def __init__(self, load: Callable[[str], tuple[Any, Any]]):
        self.load = load
        self._cache: dict[str, tuple[Any, Any]] = {}

    def _arrays(self, part: str):
        if part not in self._cache:
            self._cache[part] = self.load(part)
        return self._cache[part]

    def __call__(self, item: tuple[str, list[int]]) -> Iterator[dict[str, Any]]:
        from PIL import Image

        part, indices = item
        images, labels = self._arrays(part)
        for i in indices:
            buf = io.BytesIO()
            Image.fromarray(images[i]).save(buf, format="PNG")
            yield _item(buf.getvalue(), labels[i], f"{part}[{i}]")


def _chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


DIGITS_CLASSES = [str(d) for d in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar10_source(download_dir: Path) -> Path:
    folder = download_dir / "cifar-10-batches-py"
    if not (folder / "test_batch").is_file():
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(download_dir), train=True, download=True)
        except Exception as err:
            raise DataError(
                f"CIFAR-10 is not in {str(folder)!r} and could not be downloaded ({type(err).__name__}: {err}); "
                f"offline, extract cifar-10-python.tar.gz into {str(download_dir)!r}"
            ) from None
    return folder


def _digits_plan(download_dir: Optional[str]):
    n = len(_load_digits()[1])
    val = [i for i in range(n) if i % 5 == 0]  # every fifth image validates
    train = [i for i in range(n) if i % 5]
    splits = {"train": [("digits", c) for c in _chunks(train, 256)], "val": [("digits", c) for c in _chunks(val, 256)]}
    return _EncodeArrays(_load_digits), splits, DIGITS_CLASSES, "sklearn.datasets.load_digits"


def _cifar10_plan(download_dir: Optional[str]):
    folder = _cifar10_source(Path(download_dir).expanduser() if download_dir else cache_root() / "downloads")
    splits: dict[str, list] = {"train": [], "val": []}
    for part, split in [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "val")]:
        n = len(_load_cifar_batch(folder / part)[1])
        splits[split] += [(part, c) for c in _chunks(range(n), 1000)]
    return _EncodeArrays(functools.partial(_load_cifar_part, str(folder))), splits, CIFAR10_CLASSES, f"CIFAR-10 ({folder})"


# The one registry of built-in data sets: name -> plan(download_dir) = (optimize fn, splits, classes, source).
_BUILTINS: dict[str, Callable[[Optional[str]], tuple[Any, dict[str, list], list[str], str]]] = {
    "digits": _digits_plan,
    "cifar10": _cifar10_plan,
}
IMAGE_DATASETS = tuple(_BUILTINS)
DEFAULT_IMAGE_DATASET = "digits"  # offline: bundled with scikit-learn


def check_image_dataset(dataset: str) -> str:
    """``dataset`` if it names a built-in data set, else a :class:`DataError` naming the choices."""
    return check_choice(dataset, IMAGE_DATASETS, "image dataset")


def builtin_images_dir(dataset: str) -> Path:
    """Where a built-in data set is prepared by default: ``<cache>/images/<dataset>``."""
    return cache_root() / "images" / dataset


def prepare_builtin_images(
    dataset: str = DEFAULT_IMAGE_DATASET,
    output_dir: Optional[str] = None,
    download_dir: Optional[str] = None,
    num_workers: int = 1,
    verbose: bool = False,
) -> Path:
    """Prepare a built-in data set (``digits`` or ``cifar10``) once; returns its directory."""
    plan = _BUILTINS[check_image_dataset(dataset)]
    final = Path(output_dir).expanduser() if output_dir else builtin_images_dir(dataset)

    def build(scratch: Path) -> None:
        fn, splits, classes, source = plan(download_dir)
        _write_splits(scratch, fn, splits, classes, source, num_workers, BUILTIN_CHUNK_BYTES, verbose)

    return build_once(final, build)


# ---- the data module -------------------------------------------------------------------------------
class ImageStreamingDataset(StreamingDataset):
    """Decodes ``{"image": bytes, "label": int, "source": str}`` items with PIL and applies a transform.

    A decode error is a :class:`DataError` naming the sample's source file (``source``, stored by
    :func:`prepare_images`; older directories without it: the item index). At module level so that
    DataLoader workers started with ``spawn`` (macOS, Windows) can unpickle it.
    """

    def __init__(self, *args: Any, image_transform: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.image_transform = image_transform

    def __getitem__(self, index: Any):
        item = super().__getitem__(index)
        try:
            image = _decode(item["image"])
        except Exception as err:
            source = item.get("source") or f"item {index}"
            where = getattr(getattr(self, "input_dir", None), "path", None)
            raise DataError(
                f"cannot decode image {source!r}" + (f" stored in {where!r}" if where else "") + f": {type(err).__name__}: {err}; "
                "check the source file and prepare the data again"
            ) from err
        if self.image_transform is not None:
            image = self.image_transform(image)
        return image, item["label"]


class ImageDataModule(L.LightningDataModule):
    """Images from a prepared directory or a built-in data set, with timm augmentation and mixup/cutmix.

    Args:
        data_dir: output of ``lit-ortho prepare-images``; with ``dataset`` set, where to prepare it.
        dataset: built-in data set, ``digits`` (bundled with scikit-learn, offline) or ``cifar10``
            (downloaded once). Neither given: ``digits``.
        image_size: training / evaluation resolution.
        batch_size, val_batch_size, num_workers: per process.
        scale, ratio, hflip, color_jitter, auto_augment, re_prob, interpolation: timm's training
            transform (``auto_augment="rand-m9-mstd0.5-inc1"`` is the ConvNeXt recipe's RandAugment,
            ``re_prob`` random erasing); ``color_jitter=0`` turns jitter off.
        crop_pct: evaluation centre-crop fraction (timm: 0.875; 1.0 keeps the whole image).
        mean, std: normalisation.
        mixup, cutmix: alphas of timm's Mixup (recipe: 0.8, 1.0; 0 turns one off); ``mixup_prob`` and
            ``mixup_switch_prob`` as in timm. Targets become soft; label smoothing is the model's.
        download_dir: where CIFAR-10 is downloaded (default: the cache).
        seed: shuffling seed.
    """

    def __init__(
        self,
        data_dir: Optional[str] = None,
        dataset: Optional[str] = None,
        image_size: int = 224,
        batch_size: int = 128,
        val_batch_size: Optional[int] = None,
        num_workers: int = 4,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        auto_augment: Optional[str] = None,
        re_prob: float = 0.0,
        interpolation: str = "bicubic",
        crop_pct: float = 0.875,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        download_dir: Optional[str] = None,
        seed: int = 42,
    ):
        super().__init__()
        if dataset is not None:
            check_image_dataset(dataset)
        if data_dir is None and dataset is None:
            dataset = DEFAULT_IMAGE_DATASET
        if (mixup > 0 or cutmix > 0) and batch_size % 2:
            raise DataError(f"mixup/cutmix need an even batch_size, got {batch_size}")
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.meta: Optional[dict] = None
        self.mixup_fn = None
        if self.dataset is None:
            self._read_meta()  # fail at configuration time on a missing or wrong directory

    @property
    def root(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir
        return builtin_images_dir(self.dataset)

    def _read_meta(self) -> dict:
        self.meta = read_meta(self.root, "images", PREPARE_IMAGES_HINT)
        return self.meta

    @property
    def num_classes(self) -> int:
        if self.meta is None:
            self._read_meta()
        return self.meta["num_classes"]

    @property
    def classes(self) -> list[str]:
        if self.meta is None:
            self._read_meta()
        return self.meta["classes"]

    def prepare_data(self) -> None:
        if self.dataset is not None:
            prepare_builtin_images(
                self.dataset,
                output_dir=str(self.data_dir) if self.data_dir else None,
                download_dir=self.hparams.download_dir,
            )

    def setup(self, stage: Optional[str] = None) -> None:
        self._read_meta()
        check_chunks(self.root / "train")
        if (self.root / "val").is_dir():
            check_chunks(self.root / "val")
        hp = self.hparams
        if hp.mixup > 0 or hp.cutmix > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(
                mixup_alpha=hp.mixup,
                cutmix_alpha=hp.cutmix,
                prob=hp.mixup_prob,
                switch_prob=hp.mixup_switch_prob,
                label_smoothing=0.0,
                num_classes=self.num_classes,
            )

    def transform(self, train: bool):
        from timm.data import create_transform

        hp = self.hparams
        if train:
            return create_transform(
                hp.image_size,
                is_training=True,
                scale=tuple(hp.scale),
                ratio=tuple(hp.ratio),
                hflip=hp.hflip,
                color_jitter=hp.color_jitter or None,
                auto_augment=hp.auto_augment,
                re_prob=hp.re_prob,
                interpolation=hp.interpolation,
                mean=tuple(hp.mean),
                std=tuple(hp.std),
            )
        return create_transform(
            hp.image_size, is_training=False, interpolation=hp.interpolation, crop_pct=hp.crop_pct, mean=tuple(hp.mean), std=tuple(hp.std)
        )

    def _loader(self, split: str, train: bool):
        dataset = ImageStreamingDataset(
            str(self.root / split), shuffle=train, drop_last=train, seed=self.hparams.seed, image_transform=self.transform(train)
        )
        # Training: a resumed run goes on into the next epoch as the uninterrupted run does (see
        # EpochStreamingDataLoader), and no persistent workers: their copies of the dataset would keep the epoch
        # and restored position they started with (litdata sets both on the main process's copy at every iter()),
        # so epochs cut short by limit_train_batches would repeat one order and a resumed run its position.
        return EpochStreamingDataLoader(
            dataset,
            batch_size=self.batch_size if train else self.val_batch_size,
            num_workers=self.num_workers,
            drop_last=train,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0 and not train,
            batches_done_in_epoch=functools.partial(lightning_batches_done, self) if train else None,
        )

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self):
        if not (self.root / "val").is_dir():
            return []
        return self._loader("val", train=False)

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        return self.val_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.mixup_fn is not None and self.trainer is not None and self.trainer.training:
            images, target = batch
            return self.mixup_fn(images, target)
        return batch
