"""TFDS image datasets: mocked sources, real ArrayRecord files, missing data.

No test downloads anything: mocked sources come from `tfds.testing.mock_data`,
and the real-file tests prepare tiny stand-ins of the datasets locally (random
PNGs written by TFDS's own builder into ArrayRecord files, without TensorFlow).
"""

import io
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from icsjax import tfds_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = tfds_data.TFDS_DATASETS


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a network connection fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args!r}")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)


def mocked(num_examples):
  # USE_CODE: features from the builder class, no metadata files. (AUTO falls
  # back to it too, as the pip package ships no metadata.) The mock ignores
  # data_dir and serves the same examples for every split.
  return tfds.testing.mock_data(num_examples=num_examples,
                                policy=tfds.testing.MockPolicy.USE_CODE)


def check_arrays(name, arrays, n_train, n_test):
  train_x, train_y, test_x, test_y = arrays
  shape = tfds_data.IMAGE_SHAPES[name]
  for x, y, n in ((train_x, train_y, n_train), (test_x, test_y, n_test)):
    assert x.shape == (n,) + shape and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.min() >= 0 and y.max() < tfds_data.NUM_CLASSES[name]


def test_constants_agree_with_tfds_builders():
  assert set(tfds_data.SPLIT_SIZES) == set(tfds_data.NUM_CLASSES) == set(NAMES)
  assert set(tfds_data.IMAGE_SHAPES) == set(NAMES)
  for name in NAMES:
    features = tfds.builder(name, data_dir="/nonexistent-tfds-dir").info.features
    assert tuple(features["image"].shape) == tfds_data.IMAGE_SHAPES[name]
    assert features["label"].num_classes == tfds_data.NUM_CLASSES[name]
  from tensorflow_datasets.image_classification import mnist
  assert tfds_data.SPLIT_SIZES["mnist"] == (mnist._TRAIN_EXAMPLES, mnist._TEST_EXAMPLES)


@pytest.mark.parametrize("name", NAMES)
def test_mocked_arrays_are_the_source_examples_in_order(name, no_network):
  n = 50
  with mocked(n):
    arrays = tfds_data.load_arrays(name, data_dir="/nonexistent-tfds-dir")
    train, test = tfds.data_source(name, split=["train", "test"])
    expected = []
    for source in (train, test):
      examples = [source[i] for i in range(len(source))]
      expected.append(np.stack([ex["image"] for ex in examples]))
      expected.append(np.array([ex["label"] for ex in examples]))
  check_arrays(name, arrays, n, n)
  for got, want in zip(arrays, expected):
    assert len(got) == len(want) == n
  for got_x, want_x in ((arrays[0], expected[0]), (arrays[2], expected[2])):
    assert want_x.dtype == np.uint8
    np.testing.assert_array_equal(got_x, want_x.astype(np.float32) / np.float32(255))
  np.testing.assert_array_equal(arrays[1], expected[1])
  np.testing.assert_array_equal(arrays[3], expected[3])
  assert len(np.unique(arrays[1])) > 1  # labels are not all one value


def test_mocked_larger_dataset_reads_quickly():
  n = 5000
  with mocked(n):
    start = time.perf_counter()
    arrays = tfds_data.load_arrays("cifar10")
    elapsed = time.perf_counter() - start
  check_arrays("cifar10", arrays, n, n)
  # ~0.1 ms an example on a 2-core machine (mostly the mock's generator)
  assert elapsed < 10.0, elapsed


# --- real ArrayRecord files, prepared locally --------------------------------

def _png(image):
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "png")
  return buffer.getvalue()


def prepare_stand_in(name, data_dir, sizes, seed=0):
  """Writes random examples as `name`'s prepared ArrayRecord files.

  Uses TFDS's real builder class with its download step replaced; images are
  given as PNG bytes, so no TensorFlow is needed. Returns the generated
  {split: (uint8 images, labels)}.
  """
  shape = tfds_data.IMAGE_SHAPES[name]
  rng = np.random.default_rng(seed)
  data = {split: (rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                  rng.integers(0, tfds_data.NUM_CLASSES[name], n))
          for split, n in sizes.items()}
  has_id = "id" in tfds.builder_cls(name)(data_dir=data_dir).info.features

  def generate(split):
    images, labels = data[split]
    for i in range(len(labels)):
      ex = {"image": _png(images[i]), "label": int(labels[i])}
      if has_id:
        ex["id"] = f"{split}_{i:05d}"
      yield i, ex

  stand_in = type("StandIn", (tfds.builder_cls(name),), {
      "name": name,
      "_split_generators": lambda self, dl_manager: {s: generate(s) for s in sizes},
  }, skip_registration=True)
  stand_in(data_dir=data_dir, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          try_download_gcs=False,
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return data


@pytest.mark.parametrize("name", NAMES)
def test_reads_real_array_record_files(name, tmp_path, no_network):
  sizes = {"train": 40, "test": 12}
  data = prepare_stand_in(name, str(tmp_path), sizes)
  arrays = tfds_data.load_arrays(name, data_dir=str(tmp_path))
  check_arrays(name, arrays, sizes["train"], sizes["test"])
  for split, x, y in (("train", arrays[0], arrays[1]), ("test", arrays[2], arrays[3])):
    images, labels = data[split]
    # TFDS shuffles examples when writing: match them by their pixels.
    index = {images[i].tobytes(): i for i in range(len(labels))}
    got_u8 = np.rint(x * 255).astype(np.uint8)
    order = [index[img.tobytes()] for img in got_u8]
    assert sorted(order) == list(range(len(labels)))
    np.testing.assert_array_equal(x, images[order].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(y, labels[order])
    # ... in the source's own order (read here one example at a time)
    source = tfds.data_source(name, split=split, data_dir=str(tmp_path), download=False)
    np.testing.assert_array_equal(y, [source[i]["label"] for i in range(len(source))])
    np.testing.assert_array_equal(got_u8, np.stack([source[i]["image"] for i in range(len(source))]))


def test_batched_reads_cross_chunk_boundaries(tmp_path, monkeypatch):
  prepare_stand_in("mnist", str(tmp_path), {"train": 23, "test": 5})
  monkeypatch.setattr(tfds_data, "_CHUNK", 4)
  small = tfds_data.load_arrays("mnist", data_dir=str(tmp_path))
  monkeypatch.setattr(tfds_data, "_CHUNK", 4096)
  whole = tfds_data.load_arrays("mnist", data_dir=str(tmp_path))
  for a, b in zip(small, whole):
    np.testing.assert_array_equal(a, b)


# --- missing data --------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_missing_dataset_raises_clear_error(name, tmp_path, no_network):
  start = time.perf_counter()
  with pytest.raises(tfds_data.DatasetNotPreparedError) as info:
    tfds_data.load_arrays(name, data_dir=str(tmp_path))
  assert time.perf_counter() - start < 5.0
  assert isinstance(info.value, FileNotFoundError)
  message = str(info.value)
  assert "\n" not in message
  for part in (repr(name), str(tmp_path), "TFDS_DATA_DIR",
               f"tfds build {name} --file_format=array_record", "pip install tensorflow"):
    assert part in message, (part, message)
  assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_missing_dataset_under_env_data_dir(tmp_path, monkeypatch, no_network):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    tfds_data.load_arrays("mnist")


def test_tfrecord_prepared_dataset_says_to_rebuild(tmp_path, no_network):
  prepare_stand_in("mnist", str(tmp_path), {"train": 3, "test": 2})
  # Writing TFRecord needs TensorFlow; relabel the metadata instead.
  info = tmp_path / "mnist" / "3.0.1" / "dataset_info.json"
  info.write_text(info.read_text().replace('"array_record"', '"tfrecord"'))
  with pytest.raises(tfds_data.DatasetNotPreparedError, match="without random access"):
    tfds_data.load_arrays("mnist", data_dir=str(tmp_path))


def test_unknown_name_is_rejected():
  with pytest.raises(ValueError, match="cifar100"):
    tfds_data.load_arrays("cifar100")


def test_module_import_does_not_import_tfds():
  code = ("import sys, icsjax.tfds_data; "
          "assert 'tensorflow_datasets' not in sys.modules, 'imported eagerly'")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
