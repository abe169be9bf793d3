"""The README's figures against the committed results (``benchmarks/readme.py``)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme, figures = _load("readme"), _load("figures")


@pytest.mark.parametrize("document", readme.DOCUMENTS)
def test_every_marked_figure_agrees_with_its_results_file(document):
    differ = readme.disagreements((ROOT / document).read_text())
    assert not differ, f"run `make readme`; {document} disagrees with its results: {differ}"


@pytest.mark.parametrize("document", readme.DOCUMENTS)
def test_every_figure_names_its_results_file_beside_it(document):
    assert readme.unnamed_sources((ROOT / document).read_text()) == []


def test_every_figure_is_used_somewhere():
    text = "".join((ROOT / d).read_text() for d in readme.DOCUMENTS)
    used = {name for name, _, _ in readme.regions(text)}
    assert set(figures.FIGURES) - used == set()


def test_a_changed_figure_is_reported_and_put_back_from_its_source():
    text = "in `sampler_convergence`: <!-- fig sc-blr-lv -->99 %<!-- /fig -->"
    value = figures.FIGURES["sc-blr-lv"][1](figures.load("sampler_convergence"))
    assert value != "99 %"
    assert readme.disagreements(text) == {"sc-blr-lv": ("99 %", value)}
    assert (
        readme.render(text)
        == f"in `sampler_convergence`: <!-- fig sc-blr-lv -->{value}<!-- /fig -->"
    )


def test_a_block_is_refilled_whole():
    text = "`solver_fidelity`:\n\n<!-- begin solver-table -->\nold\n<!-- end solver-table -->\n"
    rendered = readme.render(text)
    assert "old" not in rendered and "| problem |" in rendered
    assert readme.render(rendered) == rendered


def test_an_unknown_figure_says_where_to_add_it():
    with pytest.raises(KeyError, match="FIGURES"):
        readme.render("<!-- fig no-such-figure -->1<!-- /fig -->")


def test_a_figure_whose_paragraph_does_not_name_its_file_is_reported():
    text = "A claim: <!-- fig sc-blr-lv -->1 %<!-- /fig -->.\n\nIn `sampler_convergence`: more."
    assert readme.unnamed_sources(text) == [
        "sc-blr-lv (from sampler_convergence): name `sampler_convergence` beside it"
    ]


def test_percentages_keep_their_significant_digits_and_sign():
    assert figures.pct(0.007547) == "0.75 %"
    assert figures.pct(-0.01183, sign=True) == "−1.2 %"
    assert figures.pct(54.75146) == "5,475 %"
    assert figures.pct(2.9e-8, sign=True) == "< 0.001 %"
    assert figures.sig(9.793146) == "9.79"
    assert figures.sig(-0.60289, 3) == "−0.603"


def test_paired_differences_are_mean_and_standard_error_over_seeds():
    reports = [
        {"results": [{"method": "a", "k": a}, {"method": "b", "k": b}]}
        for a, b in ((1.0, 0.0), (2.0, 0.0), (3.0, 0.0))
    ]
    assert figures.paired(reports, "a", "b", "k") == "+2.00 ± 0.58"


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_a_results_file_older_than_its_code_is_listed(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "ci@example.invalid")
    _git(tmp_path, "config", "user.name", "ci")
    code = tmp_path / "src" / "linearised_laplace" / "solver.py"
    code.parent.mkdir(parents=True)
    code.write_text("x = 1\n")
    (tmp_path / "README.md").write_text("unrelated\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "code")
    made = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    results = tmp_path / "results"
    results.mkdir()
    record = {"provenance": {"command": "python benchmarks/x.py", "commit": made}}
    (results / "x.json").write_text(json.dumps(record))
    assert readme.stale(results, tmp_path) == []
    (tmp_path / "README.md").write_text("changed, but not the code\n")
    _git(tmp_path, "commit", "-q", "-am", "docs")
    assert readme.stale(results, tmp_path) == []
    code.write_text("x = 2\n")
    _git(tmp_path, "commit", "-q", "-am", "code changed")
    (listed,) = readme.stale(results, tmp_path)
    assert listed.startswith("x.json: made at") and "1 commits" in listed
