r"""Bayesian LoRA end to end: a small BERT, pretrained, fine-tuned with ``peft`` adapters, then Laplace.

A ``transformers`` BERT built from a config (nothing is downloaded; the inputs are integer token
sequences, so no tokenizer is needed) is pretrained on one synthetic sequence task, and LoRA
adapters on its attention's query and value projections (plus a fresh copy of its classifier
head) are fine-tuned on a related one. The posterior over the adapters and the head
(``parameters=ADAPTERS``) is then fitted by :class:`~linearised_laplace.SampledLaplace` and
:class:`~linearised_laplace.ExactLaplace`, and compared with the MAP, MC dropout, an ensemble of
adapters fine-tuned from other seeds and laplace-torch's last-layer and KFAC Laplace on the same
network, on in-distribution and shifted test sequences, by the classification benchmark's
:func:`~linearised_laplace.experiments.classification.score`.

The tasks: a sequence of ``L`` tokens (after a ``[CLS]`` token ``0``) is labelled ``1`` with
probability ``sigmoid(3 z)``, ``z = (c − L/2) / (√L / 2)``, where ``c`` counts its tokens in a set
holding half the vocabulary: the lower half for pretraining, the odd tokens for fine-tuning.
Shifts: sequences twice as long (position embeddings the fine-tuning never saw), and tokens drawn
from a skewed distribution (``p(t) ∝ e^{−2t/V}``) instead of a uniform one.

Each method runs in its own process and its result is cached in ``out/methods/``, as in the
classification benchmark; ``transformers`` and ``peft`` are the ``[hf]`` extra.
"""

from __future__ import annotations

import copy
import json
import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..core.progress import progress_bar
from ..core.seeds import seeded_generator
from ..methods.exact import ExactLaplace
from ..methods.sampled import SampledLaplace
from ..network.inputs import logits
from ..solvers import SGD
from . import peers
from .baselines import ensemble_samples, mc_dropout_samples
from .classification import KAPPAS, fit_by_em, score
from .provenance import provenance
from .report import fidelity, table
from .timing import stopwatch
from .training import TrainConfig, train_map
from .workers import run_worker, use_idle_cores

ADAPTERS = ["*lora_*", "*modules_to_save*"]
"""The fine-tuned parameters of a ``peft`` LoRA model: the adapters and the classifier's copy."""
OUR_METHODS = ("map", "ensemble", "mc-dropout", "sampled", "exact")
PEER_METHODS = ("lt-lastlayer-marglik", "lt-kron-marglik")
METHODS = OUR_METHODS + PEER_METHODS
TEST_SETS = ("in-distribution", "longer", "skewed tokens")
PRETRAIN_LR, FINETUNE_LR = 3e-3, 1e-2  # Adam steps: adapters take larger ones
COLUMNS = ("accuracy", "NLL", "ECE", *(f"joint LL κ={k}" for k in (2, 5)), "logit variance")


def require_hf() -> None:
    """Raise an ``ImportError`` saying how to install ``transformers`` and ``peft``."""
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"The LoRA benchmark needs transformers and peft ({err}); install them with "
            "`pip install -e '.[hf]'` (or `make install`)."
        ) from err


@dataclass(frozen=True)
class LoraSettings:
    """What a LoRA benchmark runs (every field but ``methods`` and ``out`` is recorded).

    Attributes:
        methods: Methods to compare (:data:`METHODS`; laplace-torch's ``lt-*`` when installed).
        out: Output folder.
        vocab: Vocabulary size ``V`` (token ``0`` is ``[CLS]``).
        hidden: BERT's hidden size (its feed-forward layer is twice as wide).
        layers: Transformer layers.
        heads: Attention heads.
        length: Tokens ``L`` per training sequence (the "longer" test set has ``2L``).
        n_pretrain: Pretraining sequences.
        n_train: Fine-tuning sequences (as many again for validation, four times for each test set).
        rank: LoRA rank ``r`` (``lora_alpha = 2r``).
        pretrain_epochs: Pretraining epochs (all weights).
        finetune_epochs: Fine-tuning epochs (adapters and head).
        n_samples: Posterior samples (and dropout masks) per predictive.
        ensemble: Adapters in the LoRA ensemble (the MAP's and ones from the next seeds).
        em_steps: EM steps for the prior precision.
        em_samples: Posterior samples per sample-based E-step.
        sampler_epochs: SGD epochs per sample-then-optimise solve.
        seed: Seeds the data, the training and the samples.
    """

    methods: tuple[str, ...] = METHODS
    out: str = "benchmarks/results/lora"
    vocab: int = 32
    hidden: int = 32
    layers: int = 2
    heads: int = 2
    length: int = 16
    n_pretrain: int = 4000
    n_train: int = 500
    rank: int = 4
    pretrain_epochs: int = 20
    finetune_epochs: int = 60
    n_samples: int = 64
    ensemble: int = 5
    em_steps: int = 10
    em_samples: int = 8
    sampler_epochs: int = 50
    seed: int = 0

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(
                f"Unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}."
            )

    @staticmethod
    def smoke_test(out: str) -> LoraSettings:
        """Tiny sizes that exercise every method in seconds."""
        return LoraSettings(
            out=out,
            vocab=12,
            hidden=16,
            layers=1,
            length=8,
            n_pretrain=200,
            n_train=64,
            rank=2,
            pretrain_epochs=2,
            finetune_epochs=2,
            n_samples=4,
            ensemble=2,
            em_steps=2,
            em_samples=2,
            sampler_epochs=2,
        )


# ---------------------------------------------------------------------------------------- data


def sequences(
    n: int, length: int, vocab: int, generator: torch.Generator, skew: float = 0.0
) -> Tensor:
    """``n`` token sequences ``[n, 1 + length]``: ``[CLS]`` (``0``), then tokens ``1 … V − 1``.

    Tokens are drawn independently with ``p(t) ∝ e^{−skew · t / V}`` (uniform for ``skew = 0``).
    """
    weights = torch.exp(-skew * torch.arange(1, vocab, dtype=torch.float64) / vocab)
    tokens = torch.multinomial(weights, n * length, replacement=True, generator=generator) + 1
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), tokens.view(n, length)], dim=1)


def in_set(tokens: Tensor, vocab: int, task: str) -> Tensor:
    """Whether each token counts for ``task``: ``"pretrain"`` the lower half, ``"finetune"`` odd."""
    return tokens <= vocab // 2 if task == "pretrain" else tokens % 2 == 1


def labels(x: Tensor, vocab: int, task: str, generator: torch.Generator) -> Tensor:
    """Noisy labels ``[n]``: ``1`` with probability ``sigmoid(3 z)``, ``z`` the standardised count."""
    length = x.shape[1] - 1
    count = in_set(x[:, 1:], vocab, task).sum(1, dtype=torch.float64)
    z = (count - length / 2) / (length**0.5 / 2)
    return torch.bernoulli(torch.sigmoid(3 * z), generator=generator).long()


def make_data(settings: LoraSettings) -> dict[str, tuple[Tensor, Tensor]]:
    """The pretraining, fine-tuning (train, val) and test sets ``(tokens, labels)`` of a seed."""
    s = settings
    g = seeded_generator(s.seed, "lora-data")

    def task(n: int, name: str, length: int = s.length, skew: float = 0.0):
        x = sequences(n, length, s.vocab, g, skew)
        return x, labels(x, s.vocab, name, g)

    n_test = 4 * s.n_train
    return {
        "pretrain": task(s.n_pretrain, "pretrain"),
        "train": task(s.n_train, "finetune"),
        "val": task(s.n_train, "finetune"),
        "in-distribution": task(n_test, "finetune"),
        "longer": task(n_test, "finetune", length=2 * s.length),
        "skewed tokens": task(n_test, "finetune", skew=2.0),
    }


# -------------------------------------------------------------------------------------- models


def bert(settings: LoraSettings) -> nn.Module:
    """A freshly initialised ``BertForSequenceClassification`` (two classes), seeded."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=settings.vocab,
        hidden_size=settings.hidden,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        intermediate_size=2 * settings.hidden,
        max_position_embeddings=2 * settings.length + 1,
        num_labels=2,
    )
    torch.manual_seed(settings.seed)
    return BertForSequenceClassification(config)


def with_lora(base: nn.Module, rank: int, seed: int) -> nn.Module:
    """A ``peft`` LoRA model on a copy of ``base`` (query and value adapters, the head trainable)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.1,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
    )
    torch.manual_seed(seed)
    return get_peft_model(copy.deepcopy(base), config)


def _trained(net: nn.Module, path: Path, data, epochs: int, lr: float, seed: int) -> nn.Module:
    """``net`` trained on ``data`` (cached as ``path``), in evaluation mode."""
    if path.exists():
        net.load_state_dict(load_file(str(path)))
        return net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # dropout masks
    train_map(net, data, TrainConfig(epochs=epochs, lr=lr, batch_size=64, seed=seed))
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path))
    return net.eval()


def fine_tuned(settings: LoraSettings, data: dict, seed: int) -> nn.Module:
    """The pretrained BERT with LoRA adapters fine-tuned from ``seed`` (both cached)."""
    s = settings
    folder = Path(s.out) / "checkpoints"
    tag = f"v{s.vocab}-h{s.hidden}-l{s.layers}-a{s.heads}-L{s.length}-n{s.n_pretrain}"
    base = _trained(
        bert(s), folder / f"pretrained-{tag}-e{s.pretrain_epochs}-s{s.seed}.safetensors",
        data["pretrain"], s.pretrain_epochs, PRETRAIN_LR, s.seed,
    )  # fmt: skip
    name = f"lora-{tag}-r{s.rank}-n{s.n_train}-e{s.finetune_epochs}-s{seed}.safetensors"
    lora_net = with_lora(base, s.rank, seed)
    return _trained(lora_net, folder / name, data["train"], s.finetune_epochs, FINETUNE_LR, seed)


class Logits(nn.Module):
    """``model`` returning its logits tensor (for laplace-torch, which cannot read a ``ModelOutput``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return logits(self.model(x))


# ------------------------------------------------------------------------------------- methods


def build_predictor(method: str, settings: LoraSettings, data: dict, net: nn.Module):
    """Fit ``method`` on the fine-tuned ``net``; ``x ↦`` logit samples ``[S, N, C]`` and information."""
    s = settings
    if method == "map":
        return (lambda x: logits(net(x))[None]), {}
    if method == "ensemble":
        members = [net] + [fine_tuned(s, data, s.seed + k) for k in range(1, s.ensemble)]
        return (lambda x: ensemble_samples(members, x)), {}
    if method == "mc-dropout":  # BERT's and the adapters' own dropout, p = 0.1, as trained
        return (lambda x: mc_dropout_samples(net, x, s.n_samples, seed=s.seed)), {}
    if method.startswith("lt-"):
        return peers.laplace_torch_predictor(
            method, Logits(net), data["train"], data["val"], s.n_samples
        )
    kw = {"parameters": ADAPTERS, "n_samples": s.n_samples, "g_prior": True, "progress": False}
    if method == "sampled":
        la = SampledLaplace(net, solver=SGD(n_epochs=s.sampler_epochs), seed=s.seed, **kw)
    else:
        la = ExactLaplace(net, seed=s.seed, **kw)
    return fit_by_em(la, data["train"], s.em_steps, s.em_samples)


def evaluate(method: str, settings: LoraSettings) -> dict:
    """Fit and score one method on every test set (run in its own process by :func:`run`)."""
    threads = use_idle_cores()
    data = make_data(settings)
    net = fine_tuned(settings, data, settings.seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with stopwatch() as clock:
        predictor, info = build_predictor(method, settings, data, net)
    fit = {"fit [s]": clock.timing.wall_median, "fit CPU [s]": clock.timing.cpu_median}
    with torch.no_grad():
        scores = {name: score(predictor(data[name][0]), data[name][1]) for name in TEST_SETS}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "method": method,
        "threads": threads,
        **fit,
        "peak memory [MB]": max(peak - before, 0) / 1024,
        **scores["in-distribution"],  # at the top, as the classification report's fidelity reads
        "test sets": scores,
        **info,
    }


# ---------------------------------------------------------------------------------- the runner


def settings_json(settings: LoraSettings) -> dict:
    """What a result was computed with: every setting but the methods and the folder."""
    return {k: v for k, v in asdict(settings).items() if k not in ("methods", "out")}


def run(settings: LoraSettings, progress: bool | None = None) -> dict:
    """Train the MAP once, fit every method in its own process, and write the report.

    Methods whose result is cached for the same settings are not rerun; a method that fails is
    reported with its error instead of stopping the benchmark. Writes ``results.json`` and
    ``results.md`` in ``settings.out``.
    """
    require_hf()
    out = Path(settings.out)
    (out / "methods").mkdir(parents=True, exist_ok=True)
    fine_tuned(settings, make_data(settings), settings.seed)  # train once, before the workers
    methods = [m for m in settings.methods if not m.startswith("lt-") or peers.available()]
    skipped = [m for m in settings.methods if m not in methods]
    recorded = settings_json(settings)
    results = []
    for method in progress_bar(methods, enabled=progress, desc="methods"):
        path = out / "methods" / f"{method}.json"
        result = json.loads(path.read_text()) if path.exists() else None
        if result is None or result.get("settings") != recorded:
            result = run_worker("linearised_laplace.experiments.lora", method, asdict(settings))
            result["settings"] = recorded
            result["provenance"] = provenance()
            path.write_text(json.dumps(result, indent=1))
        results.append(result)
    report = {"settings": recorded, "skipped": skipped, "results": results}
    report["provenance"] = provenance()
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "results.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    """``results.md``: one table per test set, the sampled-against-exact fidelity, the failures."""
    s = report["settings"]
    done = [r for r in report["results"] if "error" not in r]
    lines = [
        "# Bayesian LoRA: a small BERT's adapters, in and out of distribution",
        "",
        f"BERT (hidden {s['hidden']}, {s['layers']} layers, {s['heads']} heads, vocabulary "
        f"{s['vocab']}) pretrained on {s['n_pretrain']} sequences of {s['length']} tokens, LoRA "
        f"(r = {s['rank']}, query and value) and its head fine-tuned on {s['n_train']}; the Laplace "
        f"rows are over {', '.join(f'`{p}`' for p in ADAPTERS)}. {s['n_samples']} samples per "
        f"predictive, EM for {s['em_steps']} steps, a {s['ensemble']}-adapter ensemble, seed "
        f"{s['seed']}. Joint LL κ: the classification benchmark's κ-adic joint log-likelihood "
        f"(higher is better; κ = 1 is the marginal LL, κ ∈ {list(KAPPAS)} in results.json).",
    ]
    for name in TEST_SETS:
        rows = [[r["method"], *(r["test sets"][name][k] for k in COLUMNS)] for r in done]
        lines += ["", f"## {name}", "", table(rows, ["method", *COLUMNS])]
    cost = [[r["method"], r["fit [s]"], r.get("linearised weights", "")] for r in done]
    lines += ["", "## Fit", "", table(cost, ["method", "fit [s]", "linearised weights"])]
    lines += fidelity(done)
    if report["skipped"]:
        lines += ["", f"Skipped (laplace-torch not installed): {', '.join(report['skipped'])}."]
    lines += [
        f"\n`{r['method']}` did not run: {r['error']}" for r in report["results"] if "error" in r
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Worker entry point: ``python -m linearised_laplace.experiments.lora METHOD SETTINGS``."""
    method, raw = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(evaluate(method, LoraSettings(**{**raw, "methods": (method,)}))))


if __name__ == "__main__":
    main()
