"""What a classification run shows, in words computed from its numbers: a legend and a summary.

The demo prints both under its table, and ``results.md`` opens with them. Every number in the
summary is read from the run's results; the wording follows the numbers' signs.
"""

from __future__ import annotations

LEGEND = (
    ("acc", "higher", "accuracy of the predictive's most probable class on the test set"),
    ("NLL", "lower", "mean negative log-likelihood of the test labels (the marginal predictive)"),
    (
        "joint κ=5",
        "higher",
        "κ-adic joint log-likelihood: the log-probability of the labels of 5 test points at once "
        "(40 labels, the mean over 10 shuffles of the test set); it rewards uncertainty that the "
        "points share, which the marginal NLL cannot see",
    ),
    ("ECE", "lower", "expected calibration error: |confidence − accuracy| over 15 confidence bins"),
    (
        "OOD AUROC",
        "higher",
        "how well the predictive entropy tells the test images from out-of-distribution ones "
        "(Fashion-MNIST clothes for digits, digits for Fashion-MNIST; noise images without "
        "`make data`)",
    ),
    ("fit [s]", "lower", "wall seconds of the method's own fit, after the MAP's training"),
)


def legend() -> list[str]:
    """One line per column of the demo's table: its name, its direction and what it measures."""
    return [f"  {name:10s} ({better} is better) {text}." for name, better, text in LEGEND]


def _rows(results: list[dict]) -> dict[str, dict]:
    return {r["method"]: r for r in results if "error" not in r}


def regime(map_row: dict) -> str:
    """Whether the MAP is calibrated, overconfident or underconfident, with its numbers."""
    confidence, accuracy, ece = map_row["confidence"], map_row["accuracy"], map_row["ECE"]
    numbers = f"mean confidence {confidence:.3f} at accuracy {accuracy:.3f}, ECE {ece:.3f}"
    if abs(confidence - accuracy) < 0.02:
        return f"The MAP is calibrated here ({numbers}), so the marginal NLL has little to gain."
    kind = "overconfident" if confidence > accuracy else "underconfident"
    return f"The MAP is {kind} here ({numbers})."


def against_map(ours: dict, map_row: dict) -> str:
    """How linearised Laplace's spread changes the MAP's NLL and joint log-likelihood."""
    name = f"`{ours['method']}`"
    nll = f"NLL {ours['NLL']:.3f} against the MAP's {map_row['NLL']:.3f}"
    joint = f"κ = 5 {ours['joint LL κ=5']:.2f} against {map_row['joint LL κ=5']:.2f}"
    nll_better = ours["NLL"] < map_row["NLL"]
    joint_better = ours["joint LL κ=5"] > map_row["joint LL κ=5"]
    if joint_better and not nll_better:
        return (
            f"Linearised Laplace ({name}) spreads the MAP's predictions: that costs marginal "
            f"likelihood ({nll}) but gains joint likelihood ({joint})."
        )
    if joint_better:
        return f"Linearised Laplace ({name}) improves on the MAP marginally ({nll}) and jointly ({joint})."
    if nll_better:
        return f"Linearised Laplace ({name}) improves the marginal NLL ({nll}) but not the joint likelihood ({joint})."
    return f"Linearised Laplace ({name}) does not improve on the MAP here ({nll}; {joint})."


def best(rows: dict[str, dict]) -> str:
    """The best method at κ = 5 and on NLL."""
    joint = max(rows.values(), key=lambda r: r["joint LL κ=5"])
    nll = min(rows.values(), key=lambda r: r["NLL"])
    return (
        f"Best at κ = 5: `{joint['method']}` ({joint['joint LL κ=5']:.2f}); best NLL: "
        f"`{nll['method']}` ({nll['NLL']:.3f})."
    )


def cost(sampled: dict, exact: dict) -> str:
    """What sampling costs against exact inference at this size."""
    size = sampled.get("linearised weights")
    weights = f"D = {size:,} weights" if size else "this size"
    ratio = sampled["fit [s]"] / exact["fit [s]"]
    times = (
        f"`{sampled['method']}` took {sampled['fit [s]']:.0f} s against `{exact['method']}`'s "
        f"{exact['fit [s]']:.0f} s"
    )
    if ratio > 1:
        return (
            f"{times}: at {weights} the dense exact posterior is cheap; sampling is for networks "
            "whose dense GGN does not fit (see the README's Benchmarks)."
        )
    return f"{times} ({1 / ratio:.1f}× faster) at {weights}."


def summary(results: list[dict]) -> list[str]:
    """Three or four sentences on what the run shows, from its rows (``[]`` without a MAP row)."""
    rows = _rows(results)
    if "map" not in rows:
        return []
    sentences = [regime(rows["map"])]
    ours = next((rows[m] for m in OURS if m in rows), None)
    if ours is not None:
        sentences.append(against_map(ours, rows["map"]))
    sentences.append(best(rows))
    sampled, exact = next(
        ((rows[s], rows[e]) for s, e in PAIRS if s in rows and e in rows), (None, None)
    )
    if sampled is not None and "fit [s]" in sampled:
        sentences.append(cost(sampled, exact))
    return sentences


PAIRS = (("sampled-default", "exact-default"), ("sampled", "exact"))
"""Sampled and exact rows a summary speaks of, the library's defaults first."""
OURS = tuple(m for pair in PAIRS for m in pair)
