import re
import subprocess
import sys
import textwrap

import pytest
import torch

from linearised_laplace.core import progress as _progress
from linearised_laplace.core.linalg import conjugate_gradient
from linearised_laplace.core.progress import LogProgress, expect_total, progress_bar

FIT = textwrap.dedent(
    """
    import torch
    from torch import nn
    import linearised_laplace as lla
    from linearised_laplace.core import progress as _progress

    _progress.LOG_INTERVAL = {interval}
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    la = lla.SampledLaplace(net, n_samples=2, solver=lla.SGD(n_epochs=2, batch_size=16),
                            progress={progress})
    la.optimize_prior_precision((x, y), max_iter=2)
    """
)


def _fit_with_stderr_in_a_file(tmp_path, interval: float, progress) -> str:
    log = tmp_path / "fit.log"
    script = FIT.format(interval=interval, progress=progress)
    with log.open("w") as stderr:
        subprocess.run([sys.executable, "-c", script], stderr=stderr, check=True, timeout=300)
    return log.read_text()


def test_a_fit_with_output_in_a_file_logs_each_stage_with_time_estimates(tmp_path):
    text = _fit_with_stderr_in_a_file(tmp_path, interval=0, progress=None)
    lines = [line for line in text.splitlines() if line.startswith("linearised-laplace:")]
    stages = {line.split(":")[1].split()[0] for line in lines}
    assert {"features", "noise", "EM"} <= stages, stages
    estimates = [line for line in lines if "elapsed, ~" in line and line.endswith(("left", "]"))]
    assert any(" EM 1/2 (50 %)" in line for line in estimates)
    assert any("done in" in line for line in lines)
    assert "\r" not in text  # plain lines, not a bar's carriage returns


def test_progress_true_draws_bars_even_with_output_in_a_file(tmp_path):
    text = _fit_with_stderr_in_a_file(tmp_path, interval=0, progress=True)
    assert "EM:" in text and "%|" in text and "linearised-laplace:" not in text


def test_progress_false_writes_nothing(tmp_path):
    assert "linearised-laplace:" not in _fit_with_stderr_in_a_file(tmp_path, 0, False)


def test_lines_are_at_most_one_per_interval_across_stages(monkeypatch, capsys):
    clock = [100.0]
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(_progress, "_last_line", [float("-inf")])
    monkeypatch.setattr(_progress, "LOG_INTERVAL", 60.0)
    first = LogProgress(desc="mean", total=10)
    for _ in range(5):  # 5 steps of 20 s: a line at 60 s, then silence until 60 s after it
        clock[0] += 20
        first.update()
    second = LogProgress(desc="samples", total=4)
    clock[0] += 10
    second.update()  # 10 s after the last line: silent
    first.close()
    assert capsys.readouterr().err.splitlines() == [
        "linearised-laplace: mean 3/10 (30 %), 1 min 00 s elapsed, ~2 min 20 s left",
        "linearised-laplace: mean done in 1 min 50 s",
    ]


def test_a_stage_without_a_total_has_no_estimate(monkeypatch, capsys):
    monkeypatch.setattr(_progress, "LOG_INTERVAL", 0.0)
    bar = LogProgress(desc="CG")
    bar.set_postfix(residual="1e-03", refresh=False)  # tqdm's keyword is not a value shown
    bar.update(3)
    assert capsys.readouterr().err.startswith(
        "linearised-laplace: CG 3, 0 s elapsed [residual=1e-03]\n"
    )


@pytest.mark.parametrize("enabled", [True, False])
def test_an_explicit_choice_gives_a_tqdm_bar(enabled):
    assert not isinstance(progress_bar(range(3), enabled=enabled), LogProgress)


def test_off_a_terminal_the_default_is_a_log(capsys):
    assert isinstance(progress_bar(range(3), enabled=None), LogProgress)


def test_a_stage_run_to_a_tolerance_expects_the_steps_its_convergence_needs(monkeypatch, capsys):
    bar = LogProgress(desc="CG", total=1000)
    expect_total(bar, 4, 1.0, 1e-2, 1e-4, 1000)  # two decades in 4 steps: two more need 4
    assert bar.total == 8
    expect_total(bar, 4, 1.0, 2.0, 1e-4, 1000)  # not converging: left at the last estimate
    assert bar.total == 8
    expect_total(bar, 1, 1.0, 1e-3, 1e-30, 50)  # too few steps to tell
    assert bar.total == 8
    expect_total(bar, 2, 1.0, 0.9, 1e-30, 50)  # capped at max_iter
    assert bar.total == 50
    # a CG solve logs its expected length, not its cap of 1,000 iterations
    monkeypatch.setattr(_progress, "LOG_INTERVAL", 0.0)
    monkeypatch.setattr(_progress, "_last_line", [float("-inf")])
    h = torch.diag(torch.logspace(0, 2, 50, dtype=torch.float64))
    rhs = torch.ones(1, 50, dtype=torch.float64)
    _, n_iter, _ = conjugate_gradient(lambda z: z @ h, rhs, rtol=1e-8, progress=None)
    totals = [int(t) for t in re.findall(r"gradients \d+/(\d+)", capsys.readouterr().err)]
    assert totals[0] == 1000 and n_iter <= totals[-1] <= 2 * n_iter
