import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import linearised_laplace as lla
from linearised_laplace.core import persistence
from linearised_laplace.core.persistence import solver_settings


def flip_payload_bit(path, at=0.5):
    """Flip one bit of the tensor bytes of a safetensors file, ``at`` a fraction into them."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # the payload follows the 8-byte-sized header
    data[start + int(at * (len(data) - start - 1))] ^= 1
    path.write_bytes(bytes(data))


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path = tmp_path / "f.safetensors"
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(4)}
    persistence.write(path, tensors, {"kind": "x", "values": [1.5, 2]})
    loaded, meta = persistence.read(path)
    assert (
        meta["kind"] == "x" and meta["values"] == [1.5, 2] and meta["format"] == persistence.FORMAT
    )
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert "checksums" not in meta
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


@pytest.mark.parametrize("at", [0.0, 0.5, 1.0])
def test_a_flipped_bit_in_any_tensor_is_detected(tmp_path, at):
    path = tmp_path / "f.safetensors"
    persistence.write(path, {"a": torch.randn(50), "b": torch.arange(20)}, {"kind": "x"})
    flip_payload_bit(path, at)
    with pytest.raises(ValueError, match=r"is damaged: the tensor '[ab]' does not match"):
        persistence.read(path)


def test_non_finite_floating_tensors_are_refused_and_integers_are_not_checked(tmp_path):
    path = tmp_path / "f.safetensors"
    persistence.write(path, {"n": torch.arange(3)}, {})
    persistence.read(path)
    values = torch.ones(4, dtype=torch.float64)
    values[1] = float("nan")
    persistence.write(path, {"n": torch.arange(3), "v": values}, {})
    with pytest.raises(ValueError, match=r"tensor 'v' holds 1 NaN or infinite value\(s\) of 4"):
        persistence.read(path)


def test_files_without_checksums_are_refused(tmp_path):
    path = tmp_path / "old.safetensors"
    header = {persistence.HEADER_KEY: '{"format": "linearised-laplace/1"}'}
    save_file({"a": torch.zeros(2)}, str(path), metadata=header)
    with pytest.raises(ValueError, match="has the format 'linearised-laplace/1'; .* reads"):
        persistence.read(path)
    header = {persistence.HEADER_KEY: f'{{"format": "{persistence.FORMAT}"}}'}
    save_file({"a": torch.zeros(2)}, str(path), metadata=header)
    with pytest.raises(ValueError, match="is damaged: its checksums do not list exactly"):
        persistence.read(path)


def test_a_missing_tensor_names_itself(tmp_path):
    path = tmp_path / "f.safetensors"
    persistence.write(path, {"a": torch.zeros(2)}, {})
    tensors, _ = persistence.read(path)
    assert tensors.get("b") is None
    with pytest.raises(ValueError, match="has no tensor 'b'.*it has: a"):
        tensors["b"]


SCHEMA = {
    "n": int,
    "x": float,
    "flag": bool,
    "opt": (dict, type(None)),
    "mode": frozenset({"loop", "vmap"}),
    "model": persistence.SIGNATURE,
}
GOOD = {"n": 3, "x": 2, "flag": False, "opt": None, "mode": "loop", "model": [["w", [2, 3]]]}


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("n", None, "lacks the field 'n' \\(expected an integer\\)"),
        ("n", "3", "the field 'n' should be an integer, got '3' \\(str\\)"),
        ("n", True, "the field 'n' should be an integer, got True"),
        ("x", "2", "the field 'x' should be a number"),
        ("flag", 0, "the field 'flag' should be true or false, got 0"),
        ("opt", [], "the field 'opt' should be an object or null"),
        ("mode", "jit", "the field 'mode' should be one of 'loop', 'vmap', got 'jit'"),
        ("model", [["w", ["2"]]], "the field 'model' should be a list of \\[name, shape\\] pairs"),
    ],
)
def test_check_fields_names_the_field_what_was_expected_and_what_came(field, value, match):
    persistence.check_fields(GOOD, SCHEMA, "f")
    meta = {**GOOD, field: value}
    if value is None:
        del meta[field]
    with pytest.raises(ValueError, match=match):
        persistence.check_fields(meta, SCHEMA, "f")


def test_build_config_round_trips_and_names_bad_settings():
    sgd = lla.SGD(n_epochs=3, objective="naive")
    solvers = {"SGD": lla.SGD, "CG": lla.CG}
    assert persistence.build_config(solver_settings(sgd), solvers, "solver", "f") == sgd
    bad = [
        ({"name": "Adam"}, "'solver' should be .* N one of 'SGD', 'CG', got {'name': 'Adam'}"),
        ("SGD", "the field 'solver' should be .*, got 'SGD'"),  # a name, not a spec
        ({"name": "SGD", "steps": 3}, "'steps' in the field 'solver' is not a setting of SGD"),
        ({"name": "SGD", "lr": "0.5"}, r"solver.lr should be a number like its default 0.5"),
        ({"name": "SGD", "residual": 1}, r"solver.residual should be true or false"),
        ({"name": "SGD", "lr": -1.0}, r"field 'solver' holds settings SGD refuses \(SGD `lr`"),
        ({"name": "SGD", "objective": "fast"}, "SGD refuses .*`objective` must be one of"),
    ]
    for spec, match in bad:
        with pytest.raises(ValueError, match=match):
            persistence.build_config(spec, solvers, "solver", "f")


def test_largest_difference_finds_the_farthest_tensor():
    saved = {"a": torch.zeros(3), "b": torch.zeros(2, 2), "n": torch.arange(2), "e": torch.zeros(0)}
    assert persistence.largest_difference(saved, {k: v.clone() for k, v in saved.items()}) is None
    current = {**saved, "a": torch.tensor([0.0, 0.1, 0.0]), "b": torch.full((2, 2), -0.5)}
    assert persistence.largest_difference(saved, current) == ("b", 0.5)
    current["n"] = torch.tensor([0, 3])
    assert persistence.largest_difference(saved, current) == ("n", 2.0)
    current["a"] = torch.tensor([float("nan"), 0.0, 0.0])
    assert persistence.largest_difference(saved, current) == ("a", float("inf"))
