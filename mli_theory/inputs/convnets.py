"""Small convolutional networks for 8×8 single-channel images (``sklearn:digits`` as 1×8×8).

The data sets of this project are matrices (n × 64 for digits), so every model here starts with
``nn.Unflatten(1, (1, 8, 8))``. Use them as arch specs, e.g.
``--arch mli_theory.inputs.convnets:digits_resnet_bn``. They are the convolutional nets of the
research validation (``experiments/validate.py``): the MLI paper's claims about BatchNorm concern
such networks (Lucas et al. 2021, §5).

* ``digits_cnn``: conv3×3(1→16) – ReLU – conv3×3(16→32, stride 2) – ReLU – flatten –
  linear(512→10); ``digits_cnn_bn`` adds BatchNorm2d after each convolution (before the ReLU).
* ``digits_resnet``: conv3×3(1→16) stem, two residual blocks of width 16 (conv–ReLU–conv plus the
  identity, then ReLU; the second block downsamples with stride 2 and a 1×1 projection shortcut),
  global average pool, linear(16→10); ``digits_resnet_bn`` puts BatchNorm2d after every
  convolution, as in He et al. (2016).

The same ResNet reads images as they come from the on-disk formats, (C, H, W) pixels in [0, 1] of
any size (the global average pool makes it size-agnostic): ``mnist_resnet`` / ``mnist_resnet_bn``
(1 channel, e.g. ``--data mnist:DIR``) and ``cifar_resnet`` / ``cifar_resnet_bn`` (3 channels,
``--data cifar10:DIR``); they differ from ``digits_resnet`` only by reading (C, H, W) directly.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["cifar_resnet", "cifar_resnet_bn", "digits_cnn", "digits_cnn_bn", "digits_resnet", "digits_resnet_bn",
           "image_resnet", "mnist_resnet", "mnist_resnet_bn"]


def _conv(cin: int, cout: int, stride: int, bn: bool, k: int = 3) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=not bn)]
    return layers + [nn.BatchNorm2d(cout)] if bn else layers


class _Block(nn.Module):
    """x ↦ ReLU(conv(ReLU(conv(x))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int, bn: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv(cin, cout, stride, bn), nn.ReLU(), *_conv(cout, cout, 1, bn))
        self.shortcut = nn.Sequential(*_conv(cin, cout, stride, bn, k=1)) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _cnn(bn: bool) -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        *_conv(1, 16, 1, bn), nn.ReLU(),
        *_conv(16, 32, 2, bn), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )


def _resnet(bn: bool) -> nn.Module:
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), *image_resnet(1, bn=bn))


def image_resnet(channels: int, *, bn: bool = False, width: int = 16, classes: int = 10) -> nn.Sequential:
    """The validation ResNet on (``channels``, H, W) images: conv3×3 stem, two residual blocks of
    ``width`` (the second with stride 2 and a 1×1 projection), global average pool, linear."""
    return nn.Sequential(
        *_conv(channels, width, 1, bn), nn.ReLU(),
        _Block(width, width, 1, bn), _Block(width, width, 2, bn),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes),
    )


def mnist_resnet() -> nn.Module:
    """The validation ResNet on 1-channel images (MNIST, Fashion-MNIST)."""
    return image_resnet(1)


def mnist_resnet_bn() -> nn.Module:
    """:func:`mnist_resnet` with BatchNorm2d after every convolution."""
    return image_resnet(1, bn=True)


def cifar_resnet() -> nn.Module:
    """The validation ResNet on 3-channel images (CIFAR-10)."""
    return image_resnet(3)


def cifar_resnet_bn() -> nn.Module:
    """:func:`cifar_resnet` with BatchNorm2d after every convolution."""
    return image_resnet(3, bn=True)


def digits_cnn() -> nn.Module:
    """The small CNN without BatchNorm (module docstring)."""
    return _cnn(False)


def digits_cnn_bn() -> nn.Module:
    """The small CNN with BatchNorm2d after each convolution."""
    return _cnn(True)


def digits_resnet() -> nn.Module:
    """The small ResNet without BatchNorm."""
    return _resnet(False)


def digits_resnet_bn() -> nn.Module:
    """The small ResNet with BatchNorm2d after every convolution."""
    return _resnet(True)
