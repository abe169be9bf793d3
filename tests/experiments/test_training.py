import pytest
import torch

from linearised_laplace.experiments import models, training
from linearised_laplace.experiments.datasets import digits


def _setup(seed=0):
    data = digits()
    torch.manual_seed(seed)
    net = models.build("cnn", data.image_shape, width=4).float()
    return net, (data.train[0][:200], data.train[1][:200])


def test_training_lowers_the_loss_and_leaves_eval_mode():
    net, data = _setup()
    history = training.train_map(
        net, data, training.TrainConfig(epochs=30, lr=1e-2), progress=False
    )
    assert history[-1] < 0.5 * history[0] and not net.training


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    config = training.TrainConfig(epochs=3, lr=1e-2)
    straight, data = _setup()
    training.train_map(straight, data, config, progress=False)
    path = tmp_path / "run.safetensors"
    calls = []
    write = training.persistence.write

    class Killed(Exception):
        pass

    def write_then_die(*args, **kwargs):
        write(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # dies right after the second epoch's checkpoint
            raise Killed

    monkeypatch.setattr(training.persistence, "write", write_then_die)
    first, _ = _setup()
    with pytest.raises(Killed):
        training.train_map(first, data, config, checkpoint=path, progress=False)
    monkeypatch.setattr(training.persistence, "write", write)
    resumed, _ = _setup()
    history = training.train_map(resumed, data, config, checkpoint=path, progress=False)
    assert len(history) == 3
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    net, data = _setup()
    path = tmp_path / "run.safetensors"
    training.train_map(net, data, training.TrainConfig(epochs=1), checkpoint=path, progress=False)
    other, _ = _setup()
    with pytest.raises(ValueError, match="another model, other data or other settings"):
        training.train_map(
            other, data, training.TrainConfig(epochs=2), checkpoint=path, progress=False
        )
