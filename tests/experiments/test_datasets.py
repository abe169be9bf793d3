import gzip
import struct

import numpy as np
import pytest
import torch

from linearised_laplace.experiments import datasets


def _write_idx(path, array, code=0x08, compress=True):
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def test_idx_reader_round_trips_what_it_is_given(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "images.gz", images)
    torch.testing.assert_close(datasets.read_idx(tmp_path / "images.gz"), torch.from_numpy(images))
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    _write_idx(tmp_path / "floats", floats, code=0x0D, compress=False)
    torch.testing.assert_close(datasets.read_idx(tmp_path / "floats"), torch.from_numpy(floats))


def test_idx_reader_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04" + bytes(8))
    with pytest.raises(ValueError, match="is not an IDX file"):
        datasets.read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((4, 4), dtype=np.uint8), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        datasets.read_idx(tmp_path / "short")


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path):
    for split, n in (("train", 30), ("test", 10)):
        images, labels = datasets.FASHION_FILES[split]
        _write_idx(
            tmp_path / images,
            np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        _write_idx(tmp_path / labels, np.arange(n, dtype=np.uint8) % 10)
    data = datasets.fashion_mnist(tmp_path, n_train=12, n_val=8)
    assert data.train[0].shape == (12, 1, 28, 28) and data.val[0].shape == (8, 1, 28, 28)
    assert data.test[1].tolist() == list(range(10))
    assert float(data.train[0].min()) >= 0.0 and float(data.train[0].max()) <= 1.0


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        datasets.fashion_mnist(tmp_path)


@pytest.mark.skipif(
    not datasets.FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed"
)
def test_installed_fashion_mnist_has_the_standard_sizes():
    data = datasets.fashion_mnist(n_val=5000)
    assert len(data.train[0]) == 55000 and len(data.val[0]) == 5000 and len(data.test[0]) == 10000
    assert sorted(data.test[1].unique().tolist()) == list(range(10))


def test_digits_splits_are_disjoint_and_seeded():
    data = datasets.digits()
    assert (len(data.train[0]), len(data.val[0]), len(data.test[0])) == (1000, 200, 597)
    assert data.image_shape == (1, 8, 8)
    torch.testing.assert_close(datasets.digits().test[0], data.test[0])


def test_rotation_and_resizing():
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 6] = 1.0  # right of centre
    quarter = datasets.rotate(image, 90)
    torch.testing.assert_close(datasets.rotate(image, 0), image, atol=1e-6, rtol=0)
    assert (
        int(quarter[0, 0].argmax()) == 2 * 9 + 4
    )  # a quarter turn moves it directly above the centre
    torch.testing.assert_close(
        datasets.rotate(datasets.rotate(image, 90), -90), image, atol=1e-6, rtol=0
    )
    assert datasets.resize(torch.ones(2, 1, 28, 28), 8).shape == (2, 1, 8, 8)


def test_out_of_distribution_inputs_match_the_image_size():
    data = datasets.digits()
    ood = datasets.out_of_distribution(data, n=50)
    assert ood.shape == (50, 1, 8, 8) and float(ood.max()) <= 1.0


def test_moving_image_data_copies_every_split():
    data = datasets.digits()
    moved = data.to("meta")  # a device without storage, standing in for a GPU
    assert moved.classes == data.classes and moved.image_shape == data.image_shape
    for split in ("train", "val", "test"):
        for before, after in zip(getattr(data, split), getattr(moved, split), strict=True):
            assert after.device.type == "meta" and after.shape == before.shape
            assert before.device.type == "cpu"  # the original is untouched
