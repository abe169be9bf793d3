"""Fill the README's figures from the committed results, and check that they agree with them.

Every number that the README (or a results page's hand-written notes) takes from a results file is
marked, inline as ``<!-- fig NAME -->text<!-- /fig -->`` or as whole lines between
``<!-- begin NAME -->`` and ``<!-- end NAME -->``; ``benchmarks/figures.py`` says where each
``NAME`` comes from and how it is written. The paragraph or list item around a figure must name
its source, so that a reader can find the file.

``python benchmarks/readme.py`` (``make readme``) rewrites the marked regions; ``--check`` lists
the regions that disagree with their source and exits 1 (``tests/benchmarks/test_readme.py`` makes
the same check in ``make test``). Both list the results files older
than the code they measure: made at a commit after which ``src/`` or their script changed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from figures import FIGURES, RESULTS, load

from linearised_laplace.experiments.provenance import earlier_provenance, git

ROOT = RESULTS.parent.parent
DOCUMENTS = (
    "README.md",
    "benchmarks/results/scaling.md",
    "benchmarks/results/tomography-60/results.md",
)
INLINE = re.compile(r"<!-- fig (?P<name>[\w.-]+) -->(?P<text>.*?)<!-- /fig -->", re.S)
BLOCK = re.compile(
    r"^<!-- begin (?P<name>[\w.-]+) -->\n(?P<text>.*?)^<!-- end (?P=name) -->$", re.S | re.M
)


def render(text: str, figures: dict = FIGURES) -> str:
    """``text`` with every marked region refilled from its source."""

    def fill(match: re.Match, block: bool) -> str:
        name = match["name"]
        if name not in figures:
            raise KeyError(f"unknown figure {name!r}: add it to benchmarks/figures.py's FIGURES")
        source, figure = figures[name]
        value = figure(load(source))
        if block:
            return f"<!-- begin {name} -->\n{value.rstrip()}\n<!-- end {name} -->"
        return f"<!-- fig {name} -->{value}<!-- /fig -->"

    text = BLOCK.sub(lambda m: fill(m, True), text)
    return INLINE.sub(lambda m: fill(m, False), text)


def regions(text: str) -> list[tuple[str, str, str]]:
    """``(name, marked text, surrounding paragraph)`` for every marked region of ``text``."""
    found = []
    for pattern in (BLOCK, INLINE):
        for match in pattern.finditer(text):
            # a block's paragraph is the one above it
            before = match.start() - 2 if pattern is BLOCK else match.start()
            start = max(text.rfind("\n\n", 0, before), text.rfind("\n- ", 0, before))
            ends = [
                i
                for i in (text.find("\n\n", match.end()), text.find("\n- ", match.end()))
                if i >= 0
            ]
            found.append((match["name"], match["text"], text[start : min(ends, default=len(text))]))
    return found


def disagreements(text: str, figures: dict = FIGURES) -> dict[str, tuple[str, str]]:
    """``{name: (as written, as its source gives it)}`` for every figure of ``text`` that differs."""
    written = {name: value for name, value, _ in regions(text)}
    fresh = {name: value for name, value, _ in regions(render(text, figures))}
    return {name: (written[name], fresh[name]) for name in fresh if written[name] != fresh[name]}


def unnamed_sources(text: str, figures: dict = FIGURES) -> list[str]:
    """Figures whose paragraph does not name their source file (or, for a block, the block)."""
    missing = []
    for name, _, paragraph in regions(text):
        source = figures[name][0]
        stem = source.split("/")[0]
        if stem not in paragraph:
            missing.append(f"{name} (from {source}): name `{stem}` beside it")
    return missing


def stale(results: Path = RESULTS, root: Path = ROOT) -> list[str]:
    """Results files made at a commit after which ``src/`` or their own script changed.

    A file without a recorded provenance counts as made at the last commit that changed it.
    """
    lines = []
    pages = {*results.glob("*.json"), *results.rglob("results.json")}
    for path in sorted(pages):
        made = json.loads(path.read_text()).get("provenance") or {}
        commit = made.get("commit") or earlier_provenance(path, root)["commit"]
        script = re.search(r"benchmarks/\w+\.py", made.get("command", ""))
        paths = ["src/linearised_laplace"] + ([script[0]] if script else [])
        changed = git("rev-list", "--count", f"{commit}..HEAD", "--", *paths, root=root)
        if changed and int(changed) > 0:
            lines.append(
                f"{path.relative_to(results)}: made at {commit[:10]}; {changed} commits have "
                "changed the code it measures since"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare, write nothing; exit 1 on a difference"
    )
    args = parser.parse_args(argv)
    failures = []
    for document in DOCUMENTS:
        path = ROOT / document
        text = path.read_text()
        new = render(text)
        failures += [f"{document}: {line}" for line in unnamed_sources(new)]
        if args.check:
            failures += [
                f"{document}: figure {name} reads {written!r}, its source gives {fresh!r}"
                for name, (written, fresh) in disagreements(text).items()
            ]
        elif new != text:
            path.write_text(new)
            print(f"rewrote {document}")
    for line in stale():
        print(f"older than its code: {line}")
    for line in failures:
        print(line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
