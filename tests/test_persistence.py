import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from linearised_laplace import persistence


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path = tmp_path / "f.safetensors"
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(4)}
    persistence.write(path, tensors, {"kind": "x", "values": [1.5, 2]})
    loaded, meta = persistence.read(path)
    assert (
        meta["kind"] == "x" and meta["values"] == [1.5, 2] and meta["format"] == persistence.FORMAT
    )
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["f.safetensors"]  # no temporary left behind


def test_truncated_corrupted_and_foreign_files_raise_value_errors(tmp_path):
    path = tmp_path / "f.safetensors"
    persistence.write(path, {"a": torch.randn(100)}, {"kind": "x"})
    data = path.read_bytes()
    (tmp_path / "truncated").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage").write_bytes(os.urandom(200))
    save_file({"a": torch.zeros(2)}, str(tmp_path / "foreign"))
    for name in ("truncated", "garbage", "foreign"):
        with pytest.raises(ValueError, match="not a readable linearised-laplace file"):
            persistence.read(tmp_path / name)


class _Marker:
    def __reduce__(self):
        return (open, (os.environ["LLA_MARKER"], "w"))


def test_a_pickle_is_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    monkeypatch.setenv("LLA_MARKER", str(marker))
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Marker()))
    with pytest.raises(ValueError, match="not a readable"):
        persistence.read(path)
    assert not marker.exists()


def test_unwritable_paths_raise_before_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist. Create it first"):
        persistence.check_writable(tmp_path / "missing" / "f.safetensors")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        persistence.check_writable(tmp_path)
    with pytest.raises(FileNotFoundError, match="No file at"):
        persistence.read(tmp_path / "absent.safetensors")


def test_signature_mismatch_names_the_differences():
    saved = [["a", [2, 3]], ["b", [4]]]
    with pytest.raises(ValueError, match=r"different shapes: a \[2, 3\] -> \[3, 3\]"):
        persistence.check_signature(saved, [["a", [3, 3]], ["b", [4]]], "f")
    with pytest.raises(ValueError, match="missing from the model: b; not in the file: c"):
        persistence.check_signature(saved, [["a", [2, 3]], ["c", [4]]], "f")
    persistence.check_signature(saved, [list(x) for x in saved], "f")
