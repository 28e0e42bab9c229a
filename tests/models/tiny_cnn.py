"""A small real CNN for exporter tests: conv stages at strides 2, 4, 8, then a classifier."""

from torch import nn


def build() -> nn.Module:
    def stage(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(
        stage(3, 8, 2),
        stage(8, 16, 2),
        nn.MaxPool2d(2),
        stage(16, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def not_a_module():
    return "a string"
