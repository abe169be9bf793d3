import json
from dataclasses import replace

import pytest
import torch

from linearised_laplace import cli
from linearised_laplace.experiments.tomography import TOMOGRAPHY_METHODS, TomographySettings, run


def test_cli_runs_every_method_and_writes_table_3(tmp_path, capsys):
    out = tmp_path / "ct"
    assert cli.main(["benchmark", "tomography", "--smoke", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert [r["method"] for r in report["results"]] == [*TOMOGRAPHY_METHODS, "exact (K = 4)"]
    for r in report["results"]:
        assert "error" not in r, r
        assert r["marginal LL"] == r["marginal LL"] and r["wall-clock [min]"] > 0  # finite, timed
    em = {r["method"]: r["prior_precision"] for r in report["results"] if r["prior_precision"]}
    assert set(em) == {"sampled-dual", "sampled-primal", "exact", "exact (K = 4)"}
    for name in ("results.md", "reconstruction.png", "calibration.png"):
        assert (out / name).stat().st_size > 0
    assert "patch LL" in capsys.readouterr().out
    # a rerun rescores the cached samples instead of recomputing them
    timing = out / "methods" / "exact.json"
    meta = json.loads(timing.read_text())
    meta["seconds"] = 6000.0
    timing.write_text(json.dumps(meta))
    assert cli.main(["benchmark", "tomography", "--smoke", "--out", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())["results"]
    assert again[-2]["wall-clock [min]"] == 100.0
    assert again[-2]["marginal LL"] == report["results"][-2]["marginal LL"]
    # the exact baseline does not depend on the samplers' settings: it stays cached
    fewer = replace(TomographySettings.smoke_test(str(out)), n_samples=2, methods=("exact",))
    rows = run(fewer, progress=False)["results"]
    assert [r["method"] for r in rows] == ["exact", "exact (K = 2)"]
    assert rows[0]["wall-clock [min]"] == 100.0


def test_bad_settings_say_what_to_change(tmp_path, capsys):
    with pytest.raises(ValueError, match="divisible by 2"):
        TomographySettings(size=100, depth=5)
    with pytest.raises(ValueError, match="Unknown method"):
        TomographySettings(methods=("exact", "kfac"))
    assert (
        cli.main(
            ["benchmark", "tomography", "--smoke", "--methods", "kfac", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "Unknown method(s) kfac" in capsys.readouterr().err
