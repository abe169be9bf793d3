import json
import shutil
from dataclasses import replace

import pytest
import torch

from linearised_laplace import cli
from linearised_laplace.experiments import explanation
from linearised_laplace.experiments.classification import OUR_METHODS, Settings, run
from linearised_laplace.experiments.models import build


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("classification")
    return run(Settings.smoke_test(str(out)), progress=False), out


def test_every_method_runs_end_to_end_and_is_scored(smoke_report):
    report, out = smoke_report
    assert [r["method"] for r in report["results"]] == list(OUR_METHODS)
    for r in report["results"]:
        assert "error" not in r, r
        assert r["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
        assert 0 <= r["accuracy"] <= 1 and r["NLL"] > 0 and 0 <= r["OOD AUROC"] <= 1
        assert r["joint LL κ=1"] == pytest.approx(-r["NLL"], rel=1e-9)
        assert set(r["rotated"]) == {"0", "90"}
    em = {r["method"]: r for r in report["results"] if "em_history" in r}
    variants = ("-default", "-lastlayer", "-isotropic", "-isotropic-mapmean")
    variants = {f"{m}{v}" for m in ("sampled", "exact") for v in variants}
    assert set(em) == {"sampled", "exact", "subnetwork", *variants}
    for name, r in em.items():
        isotropic = name == "subnetwork" or "-iso" in name or name.endswith("-default")
        assert r["prior"] == ("isotropic" if isotropic else "g-prior")
        # the library's default rule: θ* under an isotropic prior
        assert r["mean"] == ("network" if name.endswith(("-mapmean", "-default")) else "tangent")
    assert set(em["sampled-default"]["em costs"]) == {"set-up", "EM", "final samples"}
    assert not list((out / "checkpoints").glob("*-em.safetensors"))  # removed with each result
    head = list(build("cnn", (1, 8, 8), 10, width=4).children())[-1]
    for name in ("sampled-lastlayer", "exact-lastlayer"):
        assert em[name]["linearised weights"] == sum(p.numel() for p in head.parameters())
    assert em["sampled"]["linearised weights"] > em["sampled-lastlayer"]["linearised weights"]
    for name in ("results.md", "results.json", "figure5.png", "figure6.png", "reliability.png"):
        assert (out / name).stat().st_size > 0
    assert "Table 1 layout" in (out / "results.md").read_text()


def test_weight_decay_trains_another_map_and_older_results_stay_cached(smoke_report, tmp_path):
    _, out = smoke_report
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    cached = json.loads((out / "methods" / "map.json").read_text())
    del cached["settings"]["weight_decay"]  # a file from before the setting existed
    cached["NLL"] = 321.0
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "map.json").write_text(json.dumps(cached))
    smoke = replace(Settings.smoke_test(str(tmp_path)), methods=("map",))
    assert run(smoke, progress=False)["results"][0]["NLL"] == 321.0
    run(replace(smoke, weight_decay=0.0), progress=False)
    tags = sorted(p.name for p in (tmp_path / "checkpoints").glob("*-s0*.safetensors"))
    assert any(t.endswith("-wd0.safetensors") for t in tags), tags
    assert any(not t.endswith("-wd0.safetensors") for t in tags), tags


def test_cached_methods_are_not_rerun(smoke_report):
    report, out = smoke_report
    marker = out / "methods" / "map.json"
    cached = json.loads(marker.read_text())
    cached["NLL"] = 123.0  # a rerun would overwrite this
    marker.write_text(json.dumps(cached))
    again = run(Settings.smoke_test(str(out)), progress=False)
    assert again["results"][0]["NLL"] == 123.0
    # A sampler setting reruns the sampled method only.
    tuned = replace(Settings.smoke_test(str(out)), methods=("map", "sampled"), sampler_epochs=3)
    rerun = {r["method"]: r for r in run(tuned, progress=False)["results"]}
    assert rerun["map"]["NLL"] == 123.0
    assert rerun["sampled"]["settings"]["sampler_epochs"] == 3
    # A result scored by another protocol (the distinct-tuple joint LL had no record) reruns.
    del cached["settings"]["scoring"]
    marker.write_text(json.dumps(cached))
    rescored = run(replace(Settings.smoke_test(str(out)), methods=("map",)), progress=False)
    assert rescored["results"][0]["NLL"] != 123.0


def test_a_run_of_some_methods_keeps_the_folders_other_results(smoke_report):
    _, out = smoke_report
    smoke = Settings.smoke_test(str(out))
    run(smoke, progress=False)  # every method cached for these settings
    report = run(replace(smoke, methods=("exact", "map")), progress=False)
    assert [r["method"] for r in report["results"]] == list(OUR_METHODS)  # canonical order
    kept = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in kept["results"]] == list(OUR_METHODS)
    # results cached under other settings that the method reads are not this run's
    other = run(replace(smoke, methods=("map",), em_steps=smoke.em_steps + 1), progress=False)
    assert "map" in [r["method"] for r in other["results"]]
    assert not {"sampled", "exact", "subnetwork"} & {r["method"] for r in other["results"]}


def test_cli_seeds_write_one_report_each_and_their_mean(tmp_path, capsys):
    out = tmp_path / "seeds"
    argv = ["benchmark", "classification", "--dataset", "digits", "--smoke", "--out", str(out)]
    assert cli.main([*argv, "--methods", "map", "--seeds", "0", "1", "--angles", "0", "90"]) == 0
    for seed in (0, 1):
        report = json.loads((out / f"seed-{seed}" / "results.json").read_text())
        assert report["settings"]["seed"] == seed
        assert list(report["results"][0]["rotated"]) == ["0", "90"]
    assert "over MAP seeds [0, 1]" in (out / "results.md").read_text()
    assert "Mean ± standard error" in capsys.readouterr().out
    assert cli.main([*argv, "--methods", "map", "--seeds", "2", "--angles", "0"]) == 0
    assert "over MAP seeds [0, 1, 2]" in (out / "results.md").read_text()  # earlier seeds stay
    for page in [out / "results.md", *out.glob("seed-*/results.md")]:
        page.unlink()
    assert cli.main(["benchmark", "classification", "--render", "--out", str(out)]) == 0
    assert "over MAP seeds [0, 1, 2]" in (out / "results.md").read_text()  # from the JSON alone
    assert "| map |" in (out / "seed-1" / "results.md").read_text()
    assert cli.main(["benchmark", "classification", "--render", "--out", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    older = out / "seed-0" / "results.json"  # as if seed 0 had run with another set-up
    older.write_text(older.read_text().replace('"epochs": ', '"epochs": 1000'))
    assert cli.main([*argv, "--methods", "map", "--seeds", "2", "--angles", "0"]) == 2
    assert "(epochs differ)" in capsys.readouterr().err


def test_cli_summary_prints_a_row_scored_without_fit_time(smoke_report, capsys):
    report, out = smoke_report
    row = {k: v for k, v in report["results"][0].items() if k != "fit [s]"}
    cli._print_summary({**report, "results": [row]}, str(out))
    assert row["method"] in capsys.readouterr().out


def test_cli_demo_and_benchmark_smoke(tmp_path, capsys):
    assert cli.main(["demo", "--smoke", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "sampled" in printed and "results.md" in printed
    report = json.loads((tmp_path / "demo" / "results.json").read_text())
    sentences = explanation.summary(report["results"])
    assert sentences and all(s in printed for s in sentences)  # the summary under the table
    assert "joint κ=5  (higher is better)" in printed
    page = (tmp_path / "demo" / "results.md").read_text()
    assert page.index("## What this run shows") < page.index("## Table 1 layout")
    assert " ".join(sentences) in page
    status = cli.main(
        [
            "benchmark",
            "classification",
            "--dataset",
            "digits",
            "--smoke",
            "--methods",
            "map",
            "nystrom",
            "--out",
            str(tmp_path / "bench"),
        ]
    )
    assert status == 0 and (tmp_path / "bench" / "results.md").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["benchmark", "classification", "--methods", "magic", "--smoke"],
            "Unknown method(s) magic",
        ),
        (["demo", "--out", "/proc/forbidden/x"], "Cannot create the output folder"),
    ],
)
def test_cli_mistakes_print_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_fashion_mnist_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLA_FASHION_MNIST", str(tmp_path))
    status = cli.main(
        [
            "benchmark",
            "classification",
            "--dataset",
            "fashion-mnist",
            "--smoke",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert (
        status == 2
        and "apt-get install dataset-fashion-mnist" in err
        and len(err.splitlines()) == 1
    )


def test_help_on_every_command(capsys):
    for argv in (
        ["--help"],
        ["demo", "--help"],
        ["benchmark", "--help"],
        ["benchmark", "classification", "--help"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 0
        assert "usage: lla" in capsys.readouterr().out
