"""MNIST, Fashion-MNIST and CIFAR-10 from TensorFlow Datasets as numpy arrays.

Reads already prepared ArrayRecord files with `tfds.data_source`, which needs
neither TensorFlow nor a network (decoding the stored PNGs needs Pillow).
Preparing the files the first time does need TensorFlow, once:

  pip install tensorflow tensorflow-datasets
  tfds build mnist fashion_mnist cifar10 --file_format=array_record

`--file_format=array_record` matters: `tfds build`'s default, TFRecord, has no
random access, so `tfds.data_source` cannot read it. Files are looked up under
`data_dir`, else `$TFDS_DATA_DIR` (read at call time), else
`~/tensorflow_datasets`. A `gs://` bucket should work too (not tested here):
ArrayRecord reads GCS natively, and the metadata needs `gcsfs` when TensorFlow
is absent, plus GCS credentials. `tensorflow_datasets` is imported lazily, in
`load_arrays`, so the rest of icsjax never pays for it.
"""

from __future__ import annotations

import os

import numpy as np

TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10")
# (train, test) example counts of TFDS's train and test splits: MNIST 3.0.1 and
# Fashion-MNIST 3.0.1 (mnist.py's _TRAIN_EXAMPLES / _TEST_EXAMPLES), CIFAR-10 3.0.2.
SPLIT_SIZES = {
    "mnist": (60000, 10000),
    "fashion_mnist": (60000, 10000),
    "cifar10": (50000, 10000),
}
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}
IMAGE_SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}
# Corrupted test sets (Hendrycks & Dietterich 2019): TFDS name and its corruptions,
# each prepared as its own config NAME/CORRUPTION_SEVERITY (severity 1..5).
CORRUPTED_DATASETS = {"cifar10": "cifar10_corrupted"}
CIFAR10_CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic", "fog", "frost", "frosted_glass_blur",
    "gaussian_blur", "gaussian_noise", "impulse_noise", "jpeg_compression", "motion_blur",
    "pixelate", "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur")
ENV_DATA_DIR = "TFDS_DATA_DIR"
_CHUNK = 4096  # examples per batched read


class DatasetNotPreparedError(FileNotFoundError):
  """The TFDS dataset has no prepared ArrayRecord files in the data dir."""


def prepare_command(name: str, data_dir: str | None = None) -> str:
  """The shell command that prepares `name` once (needs TensorFlow)."""
  target = f" --data_dir={data_dir}" if data_dir else ""
  return ("pip install tensorflow tensorflow-datasets && "
          f"tfds build {name} --file_format=array_record{target}")


def _not_prepared(name, data_dir, builder, reason):
  return DatasetNotPreparedError(
      f"TFDS dataset {name!r} {reason} at {builder.data_dir} (searched data dir"
      f" {builder.data_dir_root}, set by data_dir= or ${ENV_DATA_DIR}, default"
      f" ~/tensorflow_datasets). Prepare it once with: {prepare_command(name, data_dir)}")


def _diagnose(tfds, name, data_dir, error):
  """The clear error for a failed `data_source`, or None to re-raise `error`."""
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    return _not_prepared(name, data_dir, builder, "is not prepared")
  if isinstance(error, NotImplementedError):  # prepared, but as TFRecord
    return _not_prepared(
        name, data_dir, builder,
        "is prepared in a file format without random access (e.g. TFRecord: delete that"
        " folder and rebuild it as ArrayRecord)")
  return None


def _chunks(source):
  """All examples of a data source in order, as lists, batched where possible."""
  n = len(source)
  start = 0
  if hasattr(source, "__getitems__"):
    try:
      first = source.__getitems__(list(range(min(n, _CHUNK))))
    except TypeError:
      # tfds.testing.mock_data's __getitems__ is not bound to its source
      # (TFDS 4.9.x): fall back to one example at a time.
      pass
    else:
      yield first
      start = len(first)
      while start < n:
        batch = source.__getitems__(list(range(start, min(n, start + _CHUNK))))
        yield batch
        start += len(batch)
  while start < n:  # plain loop: ~4x slower than batches on real ArrayRecords
    yield [source[i] for i in range(start, min(n, start + _CHUNK))]
    start += _CHUNK


def _to_arrays(source, shape):
  """(float32 images in [0, 1], int32 labels) of every example of `source`."""
  n = len(source)
  images = np.empty((n,) + tuple(shape), np.uint8)
  labels = np.empty((n,), np.int32)
  i = 0
  for batch in _chunks(source):
    for ex in batch:
      images[i] = ex["image"]
      labels[i] = int(ex["label"])
      i += 1
  if i != n:
    raise IndexError(f"data source of {n} examples yielded {i}")
  x = images.astype(np.float32)
  x /= np.float32(255)
  return x, labels


def _source(tfds, name: str, split, data_dir):
  """tfds.data_source of prepared files, or the clear error of why there are none."""
  if data_dir is None:
    # TFDS reads $TFDS_DATA_DIR once, at import; read it at call time instead.
    data_dir = os.environ.get(ENV_DATA_DIR) or None
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # noqa: BLE001 - narrowed by _diagnose
    clear = _diagnose(tfds, name, data_dir, e)
    if clear is None:
      raise
    raise clear from e


def load_corrupted_test(name: str, corruption: str, severity: int,
                        data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(raw test images in [0, 1], labels) of `name`'s corrupted test set, e.g.
  TFDS cifar10_corrupted/gaussian_noise_3, prepared like the others with
  ``tfds build cifar10_corrupted/gaussian_noise_3 --file_format=array_record``."""
  import tensorflow_datasets as tfds  # lazy, as in load_arrays
  full = f"{CORRUPTED_DATASETS[name]}/{corruption}_{severity}"
  return _to_arrays(_source(tfds, full, "test", data_dir), IMAGE_SHAPES[name])


def load_arrays(name: str, data_dir: str | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(raw_train_x, train_y, raw_test_x, test_y) of a prepared TFDS dataset.

  Images are float32 in [0, 1] with shape (N, H, W, C), labels int32 (N,), in
  the splits' stored order. Nothing is downloaded: missing data raises
  `DatasetNotPreparedError` (a `FileNotFoundError`) saying how to prepare it.
  """
  if name not in TFDS_DATASETS:
    raise ValueError(f"unknown TFDS dataset {name!r}; expected one of {TFDS_DATASETS}")
  import tensorflow_datasets as tfds  # lazy: ~0.5 s and many modules

  train, test = _source(tfds, name, ["train", "test"], data_dir)
  shape = IMAGE_SHAPES[name]
  train_x, train_y = _to_arrays(train, shape)
  test_x, test_y = _to_arrays(test, shape)
  return train_x, train_y, test_x, test_y
