import json
import math

import pytest

from linearised_laplace.experiments.report import (
    check_same_settings,
    em_outcome,
    fidelity,
    mean_and_error,
    seed_fidelity,
    seed_reports,
    write_seed_report,
)


def _report(seed: int, nll: dict[str, float]) -> dict:
    rows = [
        {"method": m, "NLL": v, "accuracy": 0.9, "joint LL κ=1": -v, "joint LL κ=2": -10 * v}
        for m, v in nll.items()
    ]
    return {"settings": {"seed": seed, "dataset": "digits", "model": "cnn"}, "results": rows}


def test_mean_and_standard_error():
    assert mean_and_error([2.0]) == "2"
    mean, se = 2.0, math.sqrt(((1 - 2) ** 2 + (3 - 2) ** 2) / 1 / 2)
    assert mean_and_error([1.0, 3.0]) == f"{mean:.4g} ± {se:.2g}"
    assert mean_and_error([1.0, 1.0, 1.0]) == "1 ± 0"


def test_seed_report_averages_each_method_and_drops_partial_ones(tmp_path):
    reports = [
        _report(0, {"map": 0.3, "sampled": 0.2}),
        _report(1, {"map": 0.5, "sampled": 0.4}),
        _report(2, {"map": 0.4}),  # sampled failed on this seed
    ]
    reports[2]["results"].append({"method": "sampled", "error": "boom"})
    reports[0]["results"][0]["fit [s]"] = 12.0  # recorded on one seed only: left blank
    write_seed_report(reports, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "seeds [0, 1, 2]" in text
    assert f"| κ = 2 | {mean_and_error([-3.0, -5.0, -4.0])} |" in text
    assert f"| map | {mean_and_error([0.9] * 3)} | {mean_and_error([0.3, 0.5, 0.4])} |  |" in text
    assert "sampled" not in text.split("## Table 1")[1].split("Not on every seed")[0]
    assert "Not on every seed: `sampled` (seed 0, 1)." in text


def test_seed_report_pairs_the_reference_with_each_method_by_seed(tmp_path):
    reports = [_report(s, {"map": 0.25 + s, "sampled": 0.125 + s}) for s in range(3)]
    for seed, report in enumerate(reports):
        report["results"][1]["prior_precision"] = [2.0 * (seed + 1)]
    write_seed_report(reports, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "| method | α (EM) | accuracy | NLL |" in text
    assert f"| sampled | {mean_and_error([2.0, 4.0, 6.0])} |" in text
    paired = text.split("paired by seed")[1].split("## Summary")[0]
    assert f"| κ = 1 | {mean_and_error([0.125] * 3)} |" in paired  # the MAPs' spread cancels
    assert f"| κ = 1 | {mean_and_error([-0.25, -1.25, -2.25])} |" in text  # map's own spread stays
    write_seed_report(reports, tmp_path, reference="absent")
    assert "paired by seed" not in (tmp_path / "results.md").read_text()


def test_seed_report_keeps_the_notes_of_the_page_it_replaces(tmp_path):
    reports = [_report(s, {"map": 0.25 + s}) for s in range(2)]
    write_seed_report(reports, tmp_path)
    page = tmp_path / "results.md"
    page.write_text(page.read_text() + "\n## Notes\n\nWhy the MAP wins.\n")
    write_seed_report([*reports, _report(2, {"map": 2.25})], tmp_path)
    text = page.read_text()
    assert "seeds [0, 1, 2]" in text and text.endswith("## Notes\n\nWhy the MAP wins.\n")
    assert text.count("## Notes") == 1


def test_seeds_with_other_settings_are_not_averaged():
    reports = [_report(s, {"map": 0.25}) for s in range(2)]
    reports[1]["settings"]["angles"] = [0]  # the rotated sets do not enter Table 1
    check_same_settings(reports)
    reports[1]["settings"]["epochs"] = 100
    with pytest.raises(ValueError, match="seed 1 ran with other settings than seed 0 \\(epochs"):
        check_same_settings(reports)


def test_seed_reports_are_read_in_seed_order(tmp_path):
    for seed in (10, 2):
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "results.json").write_text(json.dumps(_report(seed, {})))
    assert [r["settings"]["seed"] for r in seed_reports(tmp_path)] == [2, 10]


def test_fidelity_compares_each_sampled_row_with_its_exact_twin():
    def row(method, alpha, nll):
        return {"method": method, "prior_precision": [alpha], "NLL": nll, "logit variance": 2.0}

    done = [row("sampled", 3.0, 0.5), row("exact", 2.0, 0.4), row("sampled-lastlayer", 1.0, 0.3)]
    text = "\n".join(fidelity(done))
    assert "`sampled` against `exact`" in text and "lastlayer" not in text  # no exact twin
    assert "| α (EM) | 3 | 2 | 0.5 |" in text and "| NLL | 0.5 | 0.4 | 0.25 |" in text
    assert "| logit variance | 2 | 2 | 0 |" in text
    assert fidelity(done[2:]) == []


def test_seed_fidelity_averages_over_the_seeds_with_both_rows():
    def row(method, alpha, nll):
        return {"method": method, "prior_precision": [alpha], "NLL": nll}

    reports = [
        {"settings": {"seed": 0}, "results": [row("sampled", 3.0, 0.5), row("exact", 2.0, 0.4)]},
        {"settings": {"seed": 1}, "results": [row("sampled", 6.0, 0.3), row("exact", 4.0, 0.3)]},
        {"settings": {"seed": 2}, "results": [row("sampled", 1.0, 0.1)]},  # no exact twin
    ]
    text = "\n".join(seed_fidelity(reports))
    assert "`sampled` against `exact` on the same network, MAP seeds [0, 1]" in text
    alpha = [mean_and_error(v) for v in ([3.0, 6.0], [2.0, 4.0], [0.5, 0.5])]
    assert f"| α (EM) | {' | '.join(alpha)} |" in text
    assert f"| NLL | {mean_and_error([0.5, 0.3])} |" in text
    one_seed = "\n".join(seed_fidelity(reports[:1])).replace(", MAP seeds [0]", "")
    assert one_seed == "\n".join(fidelity(reports[0]["results"]))  # one run: the same table


def test_seed_report_pairs_the_first_sampled_row_on_every_seed_by_default(tmp_path):
    reports = [_report(s, {"map": 0.3 + s, "sampled-isotropic": 0.2 + s}) for s in (0, 1)]
    reports[0]["results"].append({"method": "sampled", "NLL": 0.1})  # seed 0 only
    write_seed_report(reports, tmp_path)
    assert "`sampled-isotropic` minus each method" in (tmp_path / "results.md").read_text()


def test_seed_report_orders_columns_ours_then_peers_whatever_the_seeds_ran_first(tmp_path):
    reports = [
        _report(0, {"lt-kron-marglik": 0.1, "exact": 0.2, "map": 0.3, "sampled": 0.4}),
        _report(1, {"sampled": 0.4, "map": 0.3, "lt-kron-marglik": 0.1, "exact": 0.2}),
    ]
    write_seed_report(reports, tmp_path)
    header = (tmp_path / "results.md").read_text().split("## Table 1 layout")[1].splitlines()[2]
    assert header == "|  | map | sampled | exact | lt-kron-marglik |"


def _em(converged: bool, steps: int = 3) -> list[dict]:
    start = [{"step": 0, "prior_precision": [1.0]}]
    return start + [
        {"step": k, "prior_precision": [2.0], "converged": converged and k == steps}
        for k in range(1, steps + 1)
    ]


def test_em_outcome_reads_the_last_step_of_the_history():
    assert em_outcome({"method": "map"}) == ""
    assert em_outcome({"em_history": _em(True)}) == "converged in 3 steps"
    assert em_outcome({"em_history": _em(False, 5)}) == "not converged after 5 steps"


def test_seed_report_marks_rows_whose_em_did_not_converge_with_their_seeds(tmp_path):
    reports = [_report(s, {"map": 0.3, "sampled": 0.2, "exact": 0.2}) for s in range(2)]
    for seed, report in enumerate(reports):
        report["results"][1]["em_history"] = _em(seed == 0)  # sampled: seed 1 unconverged
        report["results"][2]["em_history"] = _em(True)
    write_seed_report(reports, tmp_path)
    table1 = (tmp_path / "results.md").read_text().split("## Table 1")[1].split("##")[0]
    assert "| map | sampled † | exact |" in table1.replace("|  |", "|")
    assert "Seeds: `sampled` 1." in table1
    reports[1]["results"][1]["em_history"] = _em(True)
    write_seed_report(reports, tmp_path)
    assert "†" not in (tmp_path / "results.md").read_text()
