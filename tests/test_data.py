"""mnist_ddp.data: IDX and .mat readers, their validation, the splits and the per-rank shards."""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from mnist_files import (
    IDX_FILENAMES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    idx_bytes,
    image_index,
    write_fake_mnist,
    write_idx,
)
from torch.utils.data import DistributedSampler

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.schema import DataConfig
from mnist_ddp.data import download, readers
from mnist_ddp.data import order as data_order
from mnist_ddp.data import splits as data_splits


def offline(root: Path | str, **kwargs) -> DataConfig:
    """A DataConfig that never downloads."""
    return DataConfig(root=str(root), download=False, mirrors=["http://127.0.0.1:1/"], **kwargs)


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


# --- IDX reader ------------------------------------------------------------------------------


def test_helpers_write_the_idx_layout(tmp_path):
    """The helper's header is big-endian magic then one 4-byte size per dim (checked by hand)."""
    raw = write_idx(tmp_path / "x", np.array([7, 8, 9], dtype=np.uint8), LABELS_MAGIC).read_bytes()
    assert raw == b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + b"\x07\x08\x09"
    gz = write_idx(tmp_path / "x.gz", np.array([7, 8, 9], dtype=np.uint8), LABELS_MAGIC).read_bytes()
    assert gzip.decompress(gz) == raw


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_read_idx_round_trips(tmp_path, gz):
    train_x, train_y, test_x, test_y = write_fake_mnist(tmp_path, n_train=12, n_test=5, gz=gz, seed=3)
    suffix = ".gz" if gz else ""
    images = readers.read_images(tmp_path / (TRAIN_IMAGES + suffix))
    labels = readers.read_labels(tmp_path / (TRAIN_LABELS + suffix))
    assert images.dtype == np.uint8 and images.shape == (12, 784)
    np.testing.assert_array_equal(images, train_x.reshape(12, 784))
    np.testing.assert_array_equal(labels, train_y)
    raw = readers.read_idx(tmp_path / (TEST_IMAGES + suffix), IMAGES_MAGIC)
    assert raw.shape == (5, 28, 28)
    np.testing.assert_array_equal(raw, test_x)
    np.testing.assert_array_equal(readers.read_labels(tmp_path / (TEST_LABELS + suffix)), test_y)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_load_splits_standard_round_trips(tmp_path, gz):
    train_x, train_y, test_x, test_y = write_fake_mnist(tmp_path, n_train=20, n_test=7, gz=gz)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable array" warning
        splits = data_splits.load_splits(offline(tmp_path), seed=0)
    assert splits.train_images.dtype == torch.uint8 and splits.test_images.dtype == torch.uint8
    assert splits.train_labels.dtype == torch.int64 and splits.test_labels.dtype == torch.int64
    assert splits.in_features == 784
    np.testing.assert_array_equal(splits.train_images.numpy(), train_x.reshape(20, 784))
    np.testing.assert_array_equal(splits.train_labels.numpy(), train_y)
    np.testing.assert_array_equal(splits.test_images.numpy(), test_x.reshape(7, 784))
    np.testing.assert_array_equal(splits.test_labels.numpy(), test_y)
    assert str(tmp_path) in splits.source and "split=standard" in splits.source


# --- IDX corruption: every problem is an InputError naming the file and the problem -----------


@contextmanager
def raises_about(path: Path, *fragments: str) -> Iterator[None]:
    """Expect an InputError whose message names ``path`` and holds every fragment."""
    with pytest.raises(InputError) as info:
        yield
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize(
    ("magic", "size", "need"), [(IMAGES_MAGIC, 15, 16), (LABELS_MAGIC, 7, 8), (LABELS_MAGIC, 0, 8)]
)
def test_truncated_header(tmp_path, magic, size, need):
    path = tmp_path / "file"
    path.write_bytes(idx_bytes(random_images(1), IMAGES_MAGIC)[:size])
    with raises_about(path, f"truncated header ({size} bytes, need {need})"):
        readers.read_idx(path, magic)


def test_images_file_given_as_labels(tmp_path):
    path = write_idx(tmp_path / TRAIN_IMAGES, random_images(2), IMAGES_MAGIC)
    with raises_about(path, "magic number 2051 is not an IDX labels file (2049)"):
        readers.read_labels(path)


def test_labels_file_given_as_images(tmp_path):
    path = write_idx(tmp_path / TRAIN_LABELS, np.arange(10, dtype=np.uint8), LABELS_MAGIC)  # >= 16 bytes
    with raises_about(path, "magic number 2049 is not an IDX images file (2051)"):
        readers.read_images(path)


def test_swapped_files_in_load_splits(tmp_path):
    """Labels saved under the images name (and vice versa) are caught before any shape error."""
    write_fake_mnist(tmp_path, n_train=10, n_test=4)
    images, labels = tmp_path / TEST_IMAGES, tmp_path / TEST_LABELS
    images_bytes, labels_bytes = images.read_bytes(), labels.read_bytes()
    images.write_bytes(labels_bytes + bytes(8))  # long enough to get past the 16-byte header
    labels.write_bytes(images_bytes)
    with raises_about(images, "is not an IDX images file"):
        data_splits.load_splits(offline(tmp_path), seed=0)


@pytest.mark.parametrize("shape", [(3, 27, 28), (3, 28, 14), (2, 32, 32)])
def test_images_not_28x28(tmp_path, shape):
    path = write_idx(tmp_path / "imgs.gz", np.zeros(shape, dtype=np.uint8), IMAGES_MAGIC)
    with raises_about(path, f"images are {shape[1]}x{shape[2]}, MNIST's are 28x28"):
        readers.read_images(path)


@pytest.mark.parametrize("delta", [-1, -784, 1, 500], ids=["short1", "short_image", "long1", "long500"])
def test_images_length_disagrees_with_header(tmp_path, delta):
    raw = idx_bytes(random_images(3), IMAGES_MAGIC)  # 16 + 3 * 784 = 2368 bytes
    raw = raw[:delta] if delta < 0 else raw + bytes(delta)
    path = tmp_path / TRAIN_IMAGES
    path.write_bytes(raw)
    with raises_about(path, "header says 3x28x28 (2368 bytes)", f"the file has {2368 + delta} bytes"):
        readers.read_images(path)


@pytest.mark.parametrize("delta", [-1, 1])
def test_labels_length_disagrees_with_header_inside_gzip(tmp_path, delta):
    raw = idx_bytes(np.arange(5, dtype=np.uint8), LABELS_MAGIC)  # 8 + 5 = 13 bytes
    raw = raw[:delta] if delta < 0 else raw + bytes(delta)
    path = tmp_path / (TRAIN_LABELS + ".gz")
    path.write_bytes(gzip.compress(raw))
    with raises_about(path, "header says 5 (13 bytes)", f"the file has {13 + delta} bytes", "truncated or corrupt"):
        readers.read_labels(path)


def test_image_count_differs_from_label_count(tmp_path):
    images = write_idx(tmp_path / TRAIN_IMAGES, random_images(4), IMAGES_MAGIC)
    labels = write_idx(tmp_path / TRAIN_LABELS, np.zeros(5, dtype=np.uint8), LABELS_MAGIC)
    with raises_about(images, str(labels), "holds 4 images", "holds 5 labels"):
        readers.read_idx_pair(images, labels)


def test_count_mismatch_in_load_splits(tmp_path):
    write_fake_mnist(tmp_path, n_train=10, n_test=4)
    labels = write_idx(tmp_path / TEST_LABELS, np.zeros(3, dtype=np.uint8), LABELS_MAGIC)
    with raises_about(labels, str(tmp_path / TEST_IMAGES), "holds 4 images", "holds 3 labels"):
        data_splits.load_splits(offline(tmp_path), seed=0)


@pytest.mark.parametrize(("labels", "bad", "at"), [([1, 2, 10, 3], 10, 2), ([255, 0], 255, 0), ([9, 9, 9, 11], 11, 3)])
def test_label_outside_0_to_9(tmp_path, labels, bad, at):
    path = write_idx(tmp_path / TRAIN_LABELS, np.array(labels, dtype=np.uint8), LABELS_MAGIC)
    with raises_about(path, f"label {bad} at index {at} is outside 0-9"):
        readers.read_labels(path)


def test_labels_0_to_9_are_accepted(tmp_path):
    path = write_idx(tmp_path / TRAIN_LABELS, np.arange(10, dtype=np.uint8), LABELS_MAGIC)
    np.testing.assert_array_equal(readers.read_labels(path), np.arange(10))


def test_garbage_gzip(tmp_path):
    path = tmp_path / (TRAIN_IMAGES + ".gz")
    path.write_bytes(b"this is not gzip at all, just some bytes" * 4)
    with raises_about(path, "cannot read it", "download it again"):
        readers.read_images(path)


def test_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / (TRAIN_IMAGES + ".gz"), random_images(3), IMAGES_MAGIC)
    path.write_bytes(path.read_bytes()[:-20])  # cut off the tail and the CRC trailer
    with raises_about(path, "cannot read it"):
        readers.read_images(path)


def test_corrupt_gzip_in_load_splits(tmp_path):
    write_fake_mnist(tmp_path, n_train=10, n_test=4, gz=True)
    bad = tmp_path / (TRAIN_LABELS + ".gz")
    bad.write_bytes(b"\x1f\x8b garbage")
    with raises_about(bad, "cannot read it"):
        data_splits.load_splits(offline(tmp_path), seed=0)


# --- finding files ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_find_idx_files_flat(tmp_path, gz):
    write_fake_mnist(tmp_path, n_train=2, n_test=2, gz=gz)
    suffix = ".gz" if gz else ""
    found = download.find_idx_files(tmp_path)
    assert found == {key: tmp_path / (name + suffix) for key, name in download.IDX_NAMES.items()}


def test_find_idx_files_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    train_x, _, _, test_y = write_fake_mnist(raw, n_train=6, n_test=3, gz=True)
    found = download.find_idx_files(tmp_path)
    assert found == {key: raw / (name + ".gz") for key, name in download.IDX_NAMES.items()}
    splits = data_splits.load_splits(offline(tmp_path), seed=0)
    np.testing.assert_array_equal(splits.train_images.numpy(), train_x.reshape(6, 784))
    np.testing.assert_array_equal(splits.test_labels.numpy(), test_y)


def test_find_idx_files_reports_missing_as_none(tmp_path):
    write_fake_mnist(tmp_path, n_train=2, n_test=2)
    (tmp_path / TEST_LABELS).unlink()
    found = download.find_idx_files(tmp_path)
    assert found["test_labels"] is None
    assert found["train_images"] == tmp_path / TRAIN_IMAGES
    assert download.find_idx_files(tmp_path / "nowhere") == dict.fromkeys(download.IDX_NAMES)


def test_missing_files_without_download(tmp_path):
    write_fake_mnist(tmp_path, n_train=2, n_test=2)
    (tmp_path / TEST_IMAGES).unlink()
    (tmp_path / TEST_LABELS).unlink()
    with pytest.raises(InputError) as info:
        data_splits.load_splits(offline(tmp_path), seed=0)
    message = str(info.value)
    assert f"missing from {tmp_path}: {TEST_IMAGES}, {TEST_LABELS};" in message
    assert TRAIN_IMAGES not in message and TRAIN_LABELS not in message
    assert "data.download=false" in message and "MNIST_DDP_DATA" in message


def test_missing_folder_without_download(tmp_path):
    root = tmp_path / "absent"
    with pytest.raises(InputError) as info:
        data_splits.load_splits(offline(root), seed=0)
    assert f"missing from {root}: {', '.join(IDX_FILENAMES)};" in str(info.value)
    assert not root.exists()


# --- the blog's .mat file --------------------------------------------------------------------


def write_mat(path: Path, images: np.ndarray, labels: np.ndarray, **extra) -> Path:
    """A mnist-original.mat lookalike: ``data`` 784 x N uint8, ``label`` 1 x N float."""
    flat = images.reshape(len(images), -1)
    contents = {"data": np.ascontiguousarray(flat.T), "label": labels.astype(np.float64)[None, :], **extra}
    scipy.io.savemat(path, contents)
    return path


def test_read_mat_round_trips(tmp_path):
    images = random_images(9, seed=5)
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9])
    x, y = readers.read_mat(write_mat(tmp_path / "m.mat", images, labels))
    assert x.dtype == np.uint8 and x.shape == (9, 784) and x.flags.c_contiguous
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x, images.reshape(9, 784))
    np.testing.assert_array_equal(y, labels)


def test_mat_without_label(tmp_path):
    path = tmp_path / "m.mat"
    scipy.io.savemat(path, {"data": np.zeros((784, 3), dtype=np.uint8), "labels": np.zeros((1, 3))})
    with raises_about(path, "expected variables 'data' and 'label', found ['data', 'labels']"):
        readers.read_mat(path)


def test_mat_with_wrong_data_shape(tmp_path):
    path = tmp_path / "m.mat"
    scipy.io.savemat(path, {"data": np.zeros((783, 3), dtype=np.uint8), "label": np.zeros((1, 3))})
    with raises_about(path, "'data' is (783, 3), expected 784 x 3"):
        readers.read_mat(path)


def test_mat_with_bad_label(tmp_path):
    path = write_mat(tmp_path / "m.mat", random_images(3), np.array([1, 12, 3]))
    with raises_about(path, "label 12 at index 1 is outside 0-9"):
        readers.read_mat(path)


def test_mat_garbage(tmp_path):
    path = tmp_path / readers.MAT_NAME
    path.write_bytes(b"not a MATLAB file" * 20)
    with raises_about(path, "not a readable MATLAB file"):
        readers.read_mat(path)


def test_mat_path_detection(tmp_path):
    mat = tmp_path / readers.MAT_NAME
    # A root naming a .mat file is that file, whatever is beside it, unless format=idx.
    assert readers.mat_path(DataConfig(root=str(mat))) == mat
    assert readers.mat_path(DataConfig(root=str(tmp_path / "other.mat"), format="mat")) == tmp_path / "other.mat"
    assert readers.mat_path(DataConfig(root=str(mat), format="idx")) is None
    # format=mat on a folder means the folder's mnist-original.mat, present or not.
    assert readers.mat_path(DataConfig(root=str(tmp_path), format="mat")) == mat
    # auto on a folder: the .mat only when it is there and no IDX file is.
    assert readers.mat_path(DataConfig(root=str(tmp_path))) is None
    write_mat(mat, random_images(2), np.array([1, 2]))
    assert readers.mat_path(DataConfig(root=str(tmp_path))) == mat
    assert readers.mat_path(DataConfig(root=str(tmp_path), format="idx")) is None
    write_idx(tmp_path / "MNIST" / "raw" / (TRAIN_LABELS + ".gz"), np.zeros(2, dtype=np.uint8), LABELS_MAGIC)
    assert readers.mat_path(DataConfig(root=str(tmp_path))) is None


def test_mat_format_with_missing_file(tmp_path):
    with raises_about(tmp_path / readers.MAT_NAME, "does not exist", "data.root"):
        data_splits.load_splits(offline(tmp_path, format="mat"), seed=0)


def test_load_splits_from_mat_with_seed_split(tmp_path):
    images, labels = random_images(30, seed=1), np.arange(30) % 10
    images[:, 0, 0] = np.arange(30)  # number the images
    write_mat(tmp_path / readers.MAT_NAME, images, labels)
    cfg = offline(tmp_path, split="seed", seed_train_size=20, seed_test_size=6)
    splits = data_splits.load_splits(cfg, seed=4)
    train_ids, test_ids = splits.train_images[:, 0].numpy(), splits.test_images[:, 0].numpy()
    assert len(train_ids) == 20 and len(test_ids) == 6
    assert set(train_ids).isdisjoint(test_ids)
    np.testing.assert_array_equal(splits.train_labels.numpy(), train_ids % 10)
    np.testing.assert_array_equal(splits.test_images.numpy(), images.reshape(30, 784)[test_ids])


# --- scikit-learn digits ---------------------------------------------------------------------


def digits(split: str, seed: int) -> data_splits.Splits:
    return data_splits.load_splits(DataConfig(dataset="digits", split=split, root="/nonexistent"), seed=seed)


def test_digits_shapes_and_range():
    splits = digits("standard", 0)
    assert splits.train_images.shape == (1437, 64) and splits.test_images.shape == (360, 64)
    assert splits.in_features == 64
    assert splits.train_images.dtype == torch.uint8 and splits.train_labels.dtype == torch.int64
    assert int(splits.train_images.max()) == 255 and int(splits.train_images.min()) == 0
    assert set(splits.train_labels.tolist()) == set(range(10))
    assert "digits" in splits.source and "split=standard" in splits.source


def test_digits_standard_split_ignores_seed():
    a, b = digits("standard", 0), digits("standard", 7)
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.test_labels, b.test_labels)
    assert torch.equal(a.train_images, b.train_images)


def test_digits_seed_split_follows_seed():
    a, b, c = digits("seed", 1), digits("seed", 1), digits("seed", 2)
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.train_labels, b.train_labels)
    assert not torch.equal(a.test_images, c.test_images)
    assert c.train_images.shape == (1437, 64) and c.test_images.shape == (360, 64)
    # A reshuffle, not a resample: the pool is the same 1,797 images.
    pool = torch.cat([a.train_images, a.test_images])
    other = torch.cat([c.train_images, c.test_images])
    assert sorted(map(tuple, pool.tolist())) == sorted(map(tuple, other.tolist()))


# --- seed split on an MNIST pool -------------------------------------------------------------


def seed_split(root: Path, seed: int, train: int = 30, test: int = 8) -> data_splits.Splits:
    return data_splits.load_splits(offline(root, split="seed", seed_train_size=train, seed_test_size=test), seed=seed)


@pytest.fixture
def pool(tmp_path):
    """A 40 + 10 image fake MNIST whose images carry their pool index; returns (root, labels by index)."""
    _, train_y, _, test_y = write_fake_mnist(tmp_path, n_train=40, n_test=10, seed=2)
    return tmp_path, np.concatenate([train_y, test_y])


def test_seed_split_sizes_and_disjoint(pool):
    root, labels = pool
    splits = seed_split(root, seed=0)
    train_ids, test_ids = image_index(splits.train_images.numpy()), image_index(splits.test_images.numpy())
    assert len(train_ids) == 30 and len(test_ids) == 8
    assert len(set(train_ids)) == 30 and len(set(test_ids)) == 8
    assert set(train_ids).isdisjoint(test_ids)
    assert set(train_ids) | set(test_ids) <= set(range(50))
    # Labels travel with their images, and the pool mixes both original splits.
    np.testing.assert_array_equal(splits.train_labels.numpy(), labels[train_ids])
    np.testing.assert_array_equal(splits.test_labels.numpy(), labels[test_ids])
    assert "split=seed" in splits.source


def test_seed_split_is_deterministic_per_seed(pool):
    root, _ = pool
    a, b, c = seed_split(root, seed=5), seed_split(root, seed=5), seed_split(root, seed=6)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_images, b.test_images)
    assert not torch.equal(a.test_images, c.test_images)


def test_seed_split_larger_than_pool(pool):
    root, _ = pool
    with pytest.raises(InputError) as info:
        seed_split(root, seed=0, train=45, test=6)
    message = str(info.value)
    assert "data.seed_train_size=45" in message and "data.seed_test_size=6" in message
    assert "50 images available" in message
    seed_split(root, seed=0, train=44, test=6)  # exactly the pool is fine


# --- epoch order and shards ------------------------------------------------------------------


def test_epoch_permutation_deterministic_and_new_each_epoch():
    a = data_order.epoch_permutation(100, seed=3, epoch=0)
    assert sorted(a.tolist()) == list(range(100))
    assert torch.equal(a, data_order.epoch_permutation(100, seed=3, epoch=0))
    assert not torch.equal(a, data_order.epoch_permutation(100, seed=3, epoch=1))
    assert not torch.equal(a, data_order.epoch_permutation(100, seed=4, epoch=7))


@pytest.mark.parametrize(("seed", "epoch"), [(0, 0), (3, 2), (11, 5)])
def test_epoch_permutation_matches_distributed_sampler(seed, epoch):
    sampler = DistributedSampler(range(37), num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    assert data_order.epoch_permutation(37, seed, epoch).tolist() == list(sampler)


@pytest.mark.parametrize("n", [10, 8, 2])
@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_where_the_ranks_divide_batch_and_epoch_the_shards_are_distributed_samplers(n, world_size):
    order = torch.arange(n)
    for rank in range(world_size):
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=False)
        if n % world_size == 0:
            assert data_order.shard_indices(order, rank, world_size, 4).tolist() == list(sampler), (rank, world_size)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 7])
def test_each_steps_global_batch_is_the_next_prefix_of_the_order_whatever_the_ranks(world_size):
    # 23 images in global batches of 7 (the last step takes 2): the ranks of a step together take
    # the step's 7 images, each image of the epoch once, ceil or floor of 7 / W each (0 or 1 of
    # the last step's 2 at 3 or more ranks), and no padding.
    order, batch = data_order.epoch_permutation(23, seed=1, epoch=2), 7
    shards = [data_order.shard_indices(order, rank, world_size, batch) for rank in range(world_size)]
    counts = [data_order.rank_batch(batch, world_size, rank) for rank in range(world_size)]
    assert sum(counts) == batch and max(counts) - min(counts) <= (1 if world_size > 1 else 0)
    for step in range(-(-23 // batch)):
        taken = []
        for rank, shard in enumerate(shards):
            mine = shard[step * counts[rank] : (step + 1) * counts[rank]].tolist()
            assert len(mine) == (counts[rank] if step < 3 else max(0, data_order.rank_batch(2, world_size, rank)))
            taken += mine
        assert sorted(taken) == sorted(order[step * batch : (step + 1) * batch].tolist())
        assert data_order.step_images(step, batch, 23) == len(taken)
    assert sorted(torch.cat(shards).tolist()) == list(range(23))


def test_shard_indices_follow_a_shuffled_order():
    order = data_order.epoch_permutation(10, seed=1, epoch=2)
    shards = [data_order.shard_indices(order, rank, 3, 6).tolist() for rank in range(3)]
    o = order.tolist()
    assert shards == [
        [o[0], o[3], o[6], o[9]],
        [o[1], o[4], o[7]],
        [o[2], o[5], o[8]],
    ]


# --- Splits.to -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_splits_to_keeps_dtypes(tmp_path, device):
    write_fake_mnist(tmp_path, n_train=6, n_test=3)
    splits = data_splits.load_splits(offline(tmp_path), seed=0)
    moved = splits.to(torch.device(device))
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        before, after = getattr(splits, name), getattr(moved, name)
        assert after.device.type == device
        assert after.dtype == before.dtype and after.shape == before.shape
        if device == "cpu":
            assert torch.equal(after, before)
    assert moved.source == splits.source and moved.in_features == 784


def test_shift_images_moves_each_image_by_at_most_max_shift_and_fills_background():
    torch.manual_seed(0)
    dot = torch.zeros(1, 28 * 28)
    dot[0, 14 * 28 + 14] = 255
    images = data_splits.normalize_pixels(dot).repeat(2000, 1)
    offsets = torch.randint(0, 5, (2000, 2))
    shifted = data_order.shift_images(images, 2, offsets)
    assert shifted.shape == images.shape
    background = data_splits.normalize_pixels(torch.zeros(1))[0]
    positions = shifted.argmax(dim=1)
    rows, cols = positions // 28 - 14, positions % 28 - 14
    # Exactly one bright pixel survives per image, within 2 pixels of where it was, every offset used.
    assert torch.equal((shifted > background + 1).sum(dim=1), torch.ones(2000, dtype=torch.long))
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == {(y, x) for y in range(-2, 3) for x in range(-2, 3)}
    assert torch.isclose(shifted[shifted < background + 1], background).all()
    assert torch.equal(rows, 2 - offsets[:, 0]) and torch.equal(cols, 2 - offsets[:, 1])  # (rows, columns) as given
    assert torch.equal(data_order.shift_images(images, 0, torch.zeros(2000, 2, dtype=torch.long)), images)
