import hashlib

import torch

from linearised_laplace.core.checksums import checksum, digest


def test_a_checksum_covers_dtype_shape_and_bytes():
    x = torch.arange(6, dtype=torch.float32)
    expected = hashlib.sha256(b"torch.float32[6]")
    expected.update(x.numpy().tobytes())
    assert checksum(x) == expected.hexdigest()
    assert checksum(x) != checksum(x.double())  # dtype
    assert checksum(x) != checksum(x.reshape(2, 3))  # shape
    flipped = x.clone()
    flipped[0] = 0.5
    assert checksum(x) != checksum(flipped)  # bytes


def test_a_digest_depends_on_names_and_order_and_ignores_the_device_and_strides():
    a, b = torch.ones(2, 3), torch.zeros(3)
    assert digest({"a": a, "b": b}) == digest({"a": a.t().contiguous().t(), "b": b})
    assert digest({"a": a, "b": b}) != digest({"b": b, "a": a})
    assert digest({"a": a}) != digest({"c": a})
    assert digest({"a": a.t()}) == digest({"a": a.t().contiguous()})
