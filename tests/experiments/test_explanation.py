from linearised_laplace.experiments import explanation


def row(method, nll, joint, **extra):
    base = {"method": method, "NLL": nll, "joint LL κ=5": joint, "accuracy": 0.9}
    return base | {"confidence": 0.9, "ECE": 0.01, "fit [s]": 1.0} | extra


def test_a_calibrated_map_that_lla_spreads_costs_nll_and_gains_joint_likelihood():
    results = [
        row("map", 0.094, -3.85, confidence=0.905, accuracy=0.9, ECE=0.032),
        row("sampled", 0.187, -3.10, **{"fit [s]": 42.7, "linearised weights": 3818}),
        row("exact", 0.180, -3.05, **{"fit [s]": 28.2}),
        row("lt-kron-marglik", 0.2, -3.5),
    ]
    assert explanation.summary(results) == [
        "The MAP is calibrated here (mean confidence 0.905 at accuracy 0.900, ECE 0.032), so the "
        "marginal NLL has little to gain.",
        "Linearised Laplace (`sampled`) spreads the MAP's predictions: that costs marginal "
        "likelihood (NLL 0.187 against the MAP's 0.094) but gains joint likelihood "
        "(κ = 5 -3.10 against -3.85).",
        "Best at κ = 5: `exact` (-3.05); best NLL: `map` (0.094).",
        "`sampled` took 43 s against `exact`'s 28 s: at D = 3,818 weights the dense exact "
        "posterior is cheap; sampling is for networks whose dense GGN does not fit (see the "
        "README's Benchmarks).",
    ]


def test_an_overconfident_map_improved_on_both_and_a_cheaper_sampler():
    results = [
        row("map", 0.39, -15.4, confidence=0.93, accuracy=0.886),
        row("sampled", 0.36, -9.8, **{"fit [s]": 10.0}),
        row("exact", 0.35, -9.3, **{"fit [s]": 40.0}),
    ]
    regime, spread, _, cost = explanation.summary(results)
    assert regime.startswith(
        "The MAP is overconfident here (mean confidence 0.930 at accuracy 0.886"
    )
    assert spread == (
        "Linearised Laplace (`sampled`) improves on the MAP marginally (NLL 0.360 against the "
        "MAP's 0.390) and jointly (κ = 5 -9.80 against -15.40)."
    )
    assert cost == "`sampled` took 10 s against `exact`'s 40 s (4.0× faster) at this size."


def test_worse_on_both_says_so_and_failed_rows_are_left_out():
    results = [
        row("map", 0.3, -5.0, confidence=0.7, accuracy=0.9),
        row("exact", 0.4, -6.0),
        {"method": "sampled", "error": "killed"},
    ]
    regime, spread, best = explanation.summary(results)
    assert "underconfident" in regime
    assert spread.startswith("Linearised Laplace (`exact`) does not improve on the MAP here")
    assert best == "Best at κ = 5: `map` (-5.00); best NLL: `map` (0.300)."


def test_without_a_map_row_there_is_no_summary():
    assert explanation.summary([row("sampled", 0.2, -3.0)]) == []


def test_the_legend_gives_each_column_and_its_direction():
    lines = explanation.legend()
    assert len(lines) == len(explanation.LEGEND) == 6
    assert any("NLL" in line and "(lower is better)" in line for line in lines)


def test_the_library_default_rows_are_spoken_of_first():
    results = [
        row("map", 0.39, -15.4, confidence=0.93, accuracy=0.886),
        row("sampled", 0.36, -9.8, **{"fit [s]": 10.0}),
        row("exact", 0.35, -9.3, **{"fit [s]": 40.0}),
        row("sampled-default", 0.34, -6.0, **{"fit [s]": 20.0}),
        row("exact-default", 0.34, -5.9, **{"fit [s]": 80.0}),
    ]
    _, spread, _, cost = explanation.summary(results)
    assert spread.startswith("Linearised Laplace (`sampled-default`) improves on the MAP")
    assert cost.startswith("`sampled-default` took 20 s against `exact-default`'s 80 s (4.0×")
