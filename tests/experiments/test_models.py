import pytest
import torch

from linearised_laplace.experiments import models


@pytest.mark.parametrize("name", models.ARCHITECTURES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_architectures_map_images_to_logits(name, shape):
    net = models.build(name, shape, classes=7, dropout=0.1)
    assert net(torch.randn(3, *shape)).shape == (3, 7)
    assert any(isinstance(m, torch.nn.Dropout) for m in net.modules())


def test_resnet_depth_and_batchnorm():
    net = models.ResNet((1, 28, 28), depth=20, width=4)
    blocks = [m for m in net.modules() if isinstance(m, models.BasicBlock)]
    assert len(blocks) == 9 and any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.ResNet((1, 8, 8), depth=10)
    with pytest.raises(ValueError, match="Unknown model 'vit'"):
        models.build("vit", (1, 8, 8))
