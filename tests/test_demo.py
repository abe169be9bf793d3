from linearised_laplace import demo


def test_demo_runs_end_to_end(capsys):
    demo.main(["--smoke"])
    out = capsys.readouterr().out
    assert "sample error vs exact" in out
    for method in ("MAP", "sampled LLA", "exact LLA"):
        assert method in out
