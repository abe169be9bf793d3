"""The lla command: the demo and the benchmarks.

``lla demo`` runs the main job on embedded data (digits, a small CNN, every method that fits) in a
few minutes; ``lla benchmark classification`` runs the full comparison, ``lla benchmark
tomography`` the linearised deep image prior (Antorán et al., 2023, Table 3) and ``lla benchmark lora``
Bayesian LoRA adapters on a small Hugging Face BERT (the ``[hf]`` extra). Every command has
``--help``. Mistakes (a missing data set, an unknown name, an unwritable folder) print one line
saying what to do, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from .experiments import explanation, lora, peers
from .experiments.catalogue import ALL_METHODS, CORE_METHODS, OUR_METHODS
from .experiments.classification import (
    DATASETS,
    WEIGHT_DECAY,
    Settings,
    render,
    run,
    run_seeds,
)
from .experiments.models import ARCHITECTURES
from .experiments.tomography import TOMOGRAPHY_METHODS, TomographySettings
from .experiments.tomography import run as run_tomography

# the library's default rule for sampled and exact LLA, and the other core methods
DEMO_METHODS = tuple(m + "-default" if m in ("sampled", "exact") else m for m in CORE_METHODS)
DEMO_PEERS = ("lt-kron-marglik", "lt-kron-val", "lt-lastlayer-val", "lt-ella-val")  # the quick ones


def _prepare_output(out: str) -> None:
    from .core.persistence import check_writable

    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(
            f"Cannot create the output folder {out}: {err.strerror}. Pass --out DIR."
        ) from err
    check_writable(Path(out) / "results.json")


def _print_summary(report: dict, out: str) -> None:
    print(
        f"\n{'method':22s} {'acc':>7s} {'NLL':>8s} {'joint κ=5':>10s} {'ECE':>7s} {'OOD AUROC':>10s} {'fit [s]':>8s}"
    )
    for r in report["results"]:
        if "error" in r:
            print(f"{r['method']:22s} did not run: {r['error']}")
            continue
        fit = f"{r['fit [s]']:8.1f}" if "fit [s]" in r else f"{'':8s}"  # scored from a cache
        print(
            f"{r['method']:22s} {r['accuracy']:7.4f} {r['NLL']:8.4f} {r['joint LL κ=5']:10.4f} "
            f"{r['ECE']:7.4f} {r['OOD AUROC']:10.4f} {fit}"
        )
    print("\nColumns (test set):", *explanation.legend(), sep="\n")
    if sentences := explanation.summary(report["results"]):
        print("\nWhat this run shows:", *(f"  {s}" for s in sentences), sep="\n")
    if report["skipped"]:
        print(
            f"\nskipped (laplace-torch is not installed; `make peers`): {', '.join(report['skipped'])}"
        )
    print(
        f"\nTables: {out}/results.md; figures: {out}/figure5.png, figure6.png, reliability.png; JSON: {out}/results.json"
    )


def demo(args: argparse.Namespace) -> None:
    """The main job on the embedded digits."""
    methods = DEMO_METHODS + (DEMO_PEERS if peers.available() else ())
    if args.smoke:
        settings = replace(Settings.smoke_test(args.out), methods=OUR_METHODS)
    else:
        settings = Settings(
            out=args.out, methods=methods, n_samples=32, em_steps=5, sampler_epochs=20
        )
    _prepare_output(settings.out)
    print(
        f"linearised-laplace demo: {settings.model} on {settings.dataset}, methods: "
        f"{', '.join(settings.methods)} → {settings.out}/"
    )
    _print_summary(run(settings, progress=True), settings.out)


def classification(args: argparse.Namespace) -> None:
    """The classification benchmark (Table 1, Figures 5 and 6)."""
    if args.render:
        render(args.out)
        print(f"rewrote the reports in {args.out} from their results.json")
        return
    if args.smoke:
        settings = Settings.smoke_test(args.out, args.dataset, args.model)
    else:
        settings = Settings(
            dataset=args.dataset,
            model=args.model,
            out=args.out,
            n_train=args.n_train,
            width=args.width,
            epochs=args.epochs,
            weight_decay=args.weight_decay,
            n_samples=args.n_samples,
            em_steps=args.em_steps,
            em_samples=args.em_samples,
            sampler_epochs=args.sampler_epochs,
            mean_epochs=args.mean_epochs,
            device=args.device,
        )
    if args.methods:
        settings = replace(settings, methods=tuple(args.methods))
    if args.angles:
        settings = replace(settings, angles=tuple(args.angles))
    _prepare_output(settings.out)
    if args.seeds:
        reports = run_seeds(settings, args.seeds, progress=True)
        for report, seed in zip(reports, args.seeds, strict=True):
            _print_summary(report, f"{settings.out}/seed-{seed}")
        print(f"\nMean ± standard error over the seed folders: {settings.out}/results.md")
        return
    _print_summary(run(settings, progress=True), settings.out)


def tomography(args: argparse.Namespace) -> None:
    """The tomography benchmark (Table 3)."""
    out = args.out or f"lla-output/tomography-{args.angles}"
    if args.smoke:
        settings = TomographySettings.smoke_test(out)
    else:
        settings = TomographySettings(
            angles=args.angles,
            image=args.image,
            width=args.width,
            n_samples=args.n_samples,
            em_steps=args.em_steps,
            out=out,
            device=args.device,
        )
    if args.methods:
        settings = replace(settings, methods=tuple(args.methods))
    _prepare_output(settings.out)
    report = run_tomography(settings, progress=True)
    print(f"\n{report['measurements']} measurements, σ = {report['sigma']:.4g}")
    print(f"{'method':16s} {'marginal LL':>12s} {'patch LL':>10s} {'PSNR':>7s} {'wall [min]':>11s}")
    for r in report["results"]:
        if "error" in r:
            print(f"{r['method']:16s} did not run: {r['error']}")
            continue
        print(
            f"{r['method']:16s} {r['marginal LL']:12.4f} {r['patch LL (10×10)']:10.4f} "
            f"{r['PSNR']:7.2f} {r['wall-clock [min]']:11.2f}"
        )
    print(f"\nTable: {settings.out}/results.md; figures: reconstruction.png, calibration.png")


def lora_benchmark(args: argparse.Namespace) -> None:
    """The Bayesian LoRA benchmark on a small BERT."""
    if args.smoke:
        settings = lora.LoraSettings.smoke_test(args.out)
    else:
        settings = lora.LoraSettings(
            out=args.out, n_train=args.n_train, n_samples=args.n_samples, seed=args.seed
        )
    if args.methods:
        settings = replace(settings, methods=tuple(args.methods))
    _prepare_output(settings.out)
    report = lora.run(settings, progress=True)
    print(f"\n{'method':22s} {'set':16s} {'acc':>7s} {'NLL':>8s} {'joint κ=5':>10s} {'ECE':>7s}")
    for r in report["results"]:
        if "error" in r:
            print(f"{r['method']:22s} did not run: {r['error']}")
            continue
        for name, m in r["test sets"].items():
            print(
                f"{r['method']:22s} {name:16s} {m['accuracy']:7.4f} {m['NLL']:8.4f} "
                f"{m['joint LL κ=5']:10.4f} {m['ECE']:7.4f}"
            )
    if report["skipped"]:
        print(f"\nskipped (laplace-torch is not installed): {', '.join(report['skipped'])}")
    print(f"\nTable: {settings.out}/results.md; JSON: {settings.out}/results.json")


def parser() -> argparse.ArgumentParser:
    """The ``lla`` argument parser."""
    root = argparse.ArgumentParser(prog="lla", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    d = commands.add_parser("demo", help="the main job on embedded data (digits), a few minutes")
    d.add_argument("--out", default="lla-output", help="output folder (default: lla-output)")
    d.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for tests)")
    d.set_defaults(func=demo)
    bench = commands.add_parser("benchmark", help="the full benchmarks").add_subparsers(
        dest="benchmark", required=True
    )
    c = bench.add_parser("classification", help="Table 1, Figures 5 and 6 on an image data set")
    c.add_argument("--dataset", default="fashion-mnist", choices=DATASETS, help="data set")
    c.add_argument("--model", default="cnn", choices=ARCHITECTURES, help="network")
    c.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help=f"subset of: {', '.join(ALL_METHODS)}",
    )
    c.add_argument("--out", default="lla-output/classification", help="output folder")
    c.add_argument("--n-train", type=int, default=None, help="training points kept (default: all)")
    c.add_argument("--width", type=int, default=16, help="CNN/ResNet width")
    c.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="MAP training epochs (default: 100 digits, 20 Fashion-MNIST)",
    )
    c.add_argument(
        "--weight-decay",
        type=float,
        default=WEIGHT_DECAY,
        help=f"MAP L2 penalty (default {WEIGHT_DECAY:g}; 0 and many epochs: an overconfident MAP)",
    )
    c.add_argument("--n-samples", type=int, default=64, help="posterior samples per predictive")
    c.add_argument("--em-steps", type=int, default=10, help="EM steps")
    c.add_argument("--em-samples", type=int, default=8, help="samples per sample-based E-step")
    c.add_argument("--sampler-epochs", type=int, default=50, help="SGD epochs per sampling solve")
    c.add_argument(
        "--mean-epochs",
        type=int,
        default=None,
        help="SGD epochs for the EM mean (default: Newton-CG)",
    )
    c.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda where there is one"
    )
    c.add_argument(
        "--angles",
        nargs="+",
        type=int,
        metavar="DEGREES",
        help=f"test-set rotations (Figure 5; default {' '.join(map(str, Settings.angles))}; "
        "0 alone scores the clean test set only)",
    )
    c.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        help="one run per MAP seed (in OUT/seed-SEED) and mean ± standard error in OUT/results.md",
    )
    c.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for tests)")
    c.add_argument(
        "--render", action="store_true", help="rewrite the reports in --out from their JSON only"
    )
    c.set_defaults(func=classification)
    t = bench.add_parser("tomography", help="Table 3: linearised deep image prior for CT")
    t.add_argument("--angles", type=int, default=60, choices=(60, 120), help="projection angles")
    t.add_argument("--image", default="shepp-logan", choices=("shepp-logan", "ellipses"))
    t.add_argument("--width", type=int, default=TomographySettings.width, help="U-Net channels")
    t.add_argument(
        "--n-samples", type=int, default=TomographySettings.n_samples, help="image samples"
    )
    t.add_argument("--em-steps", type=int, default=TomographySettings.em_steps, help="EM steps")
    t.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda where there is one"
    )
    t.add_argument(
        "--methods", nargs="+", metavar="METHOD", help=f"subset of: {', '.join(TOMOGRAPHY_METHODS)}"
    )
    t.add_argument(
        "--out", default=None, help="output folder (default: lla-output/tomography-ANGLES)"
    )
    t.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for tests)")
    t.set_defaults(func=tomography)
    defaults = lora.LoraSettings()
    b = bench.add_parser("lora", help="Bayesian LoRA adapters on a small BERT (the [hf] extra)")
    b.add_argument(
        "--methods", nargs="+", metavar="METHOD", help=f"subset of: {', '.join(lora.METHODS)}"
    )
    b.add_argument("--out", default=defaults.out, help=f"output folder (default: {defaults.out})")
    b.add_argument("--n-train", type=int, default=defaults.n_train, help="fine-tuning sequences")
    b.add_argument(
        "--n-samples", type=int, default=defaults.n_samples, help="samples per predictive"
    )
    b.add_argument("--seed", type=int, default=defaults.seed, help="seeds data, training, samples")
    b.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for tests)")
    b.set_defaults(func=lora_benchmark)
    return root


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lla``; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (
        ValueError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        MemoryError,
        ImportError,
    ) as err:
        print(f"lla: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
