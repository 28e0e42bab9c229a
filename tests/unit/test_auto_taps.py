"""Unit tests of the automatic layer choice for arbitrary torch models (exporter.auto_taps) and of how a transformer
block's tokens become a map and a class token (exporter.torch_export.Tap), on tiny hand-built models: a CNN whose
stages start with a downsampling block, a ViT with a class token and two registers, their headless variants, and a
CNN with a shared activation. One test exports the ViT to ONNX + model.json (a few seconds on CPU)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from engine.manifest import Preprocess, Source, load_manifest
from exporter.auto_taps import choose, named, trace
from exporter.errors import ExportError
from exporter.sources import _export_torch
from exporter.torch_export import Tap, TokenLayout, order_by_depth

WIDTH, DEPTH, PATCH, PREFIX, CLASSES = 16, 8, 8, 3, 10  # the ViT: class token + 2 registers before the patches


class Down(nn.Module):
    """A stage's first block: a convolution at the old stride, then one that halves the resolution (as ResNet's)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(cin, cout, 1), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(cout, cout, 3, stride=2, padding=1), nn.ReLU()

    def forward(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x))))


class Residual(nn.Module):
    """A block that keeps the resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv, self.act = nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()

    def forward(self, x):
        return x + self.act(self.conv(x))


class TinyCNN(nn.Module):
    """Stem at stride 2, four stages (strides 4 to 32 on a 64 px image), pooled, flattened, one Linear head."""

    def __init__(self, head: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.layer1, self.layer2 = nn.Sequential(Down(4, 8), Residual(8)), nn.Sequential(Down(8, 8), Residual(8))
        self.layer3, self.layer4 = nn.Sequential(Down(8, 16), Residual(16)), nn.Sequential(Down(16, 16), Residual(16))
        self.pool, self.flat = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(16, CLASSES) if head else nn.Identity()

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.flat(self.pool(x)))


class SharedActivation(nn.Module):
    """One ReLU module after every convolution: it runs three times, so it has no single output to expose."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv3(self.act(self.conv2(self.act(self.conv1(x))))))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(1, 2) / WIDTH**0.5, dim=-1)
        return self.proj(weights @ v)


class Block(nn.Module):
    """[N, T, C] -> [N, T, C]: pre-norm attention and MLP, each added to the residual stream."""

    def __init__(self):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(WIDTH), Attention()
        self.norm2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(), nn.Linear(2 * WIDTH, WIDTH))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """8x8 patches, a class token and two register tokens before them, 8 blocks, the head on the class token."""

    def __init__(self, head: bool = True):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, WIDTH, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, WIDTH))
        self.reg_token = nn.Parameter(torch.randn(1, PREFIX - 1, WIDTH))
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, CLASSES) if head else nn.Identity()  # timm's num_classes=0

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        prefix = torch.cat([self.cls_token, self.reg_token], dim=1).expand(x.shape[0], -1, -1)
        x = torch.cat([prefix, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def build(cls, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return cls(**kwargs).eval()


def test_cnn_stage_ends_and_head():
    """The stem and each stage end at their stride, not the next stage's first convolution (which still runs at
    the old stride); levels follow the stride; the embedding is what enters the last Linear, the logits what leaves."""
    model = build(TinyCNN)
    assert next(act.shape for act in trace(model, 64) if act.module == "layer1.0.conv1") == (1, 8, 32, 32)
    taps, levels = choose(model, 64)
    assert [(tap.name, tap.module, tap.port) for tap in taps] == [
        ("stride2", "stem", "output"),
        ("stride4", "layer1", "output"),
        ("stride8", "layer2", "output"),
        ("stride16", "layer3", "output"),
        ("stride32", "layer4", "output"),
        ("embedding", "fc", "input"),
        ("logits", "fc", "output"),
    ]
    assert levels == ["low", "low", "mid", "mid", "high", "high", "high"]
    assert all(tap.tokens is None and tap.view == "as_is" for tap in taps)


def test_cnn_stage_modules_narrow_the_candidates():
    """timm's feature_info names the stages: only those modules may be chosen, at the strides they give."""
    taps, levels = choose(build(TinyCNN), 64, {"stem", "layer2", "layer4"})
    assert [(tap.name, tap.module) for tap in taps] == [
        ("stride2", "stem"),
        ("stride8", "layer2"),
        ("stride32", "layer4"),
        ("embedding", "fc"),
        ("logits", "fc"),
    ]
    assert levels == ["low", "mid", "high", "high", "high"]


def test_headless_models_expose_their_output_as_the_embedding():
    """num_classes=0: the model's output vector is the embedding, and there are no logits."""
    taps, levels = choose(build(TinyCNN, head=False), 64)
    assert [(tap.name, tap.module, tap.port) for tap in taps[-2:]] == [("stride32", "layer4", "output"),
                                                                      ("embedding", "fc", "output")]  # fmt: skip
    assert levels[-1] == "high"
    taps, _ = choose(build(TinyViT, head=False), 32)
    assert [tap.name for tap in taps if not tap.name.startswith(("block", "patch"))] == ["embedding"]
    assert taps[-1] == Tap("embedding", "head")


def test_a_module_that_runs_twice_is_never_chosen():
    """A shared activation has no single output: tracing drops it, the stage ends fall back to the convolutions,
    and naming it anyway fails before export with a message that says why."""
    model = build(SharedActivation)
    assert "act" not in {act.module for act in trace(model, 32)}
    taps, _ = choose(model, 32)
    assert [(tap.name, tap.module) for tap in taps] == [("stride2", "conv1"), ("stride4", "conv3")]
    taps, _ = named(model, 32, ["act"], None)
    with pytest.raises(ExportError, match="'act' runs 3 times"):
        order_by_depth(model, taps, (32, 32))


def test_vit_patch_embedding_and_blocks_at_quarter_depths():
    """Blocks 2, 4, 6 and 8 of 8, each as a patch-token map and its class token, levels by depth thirds."""
    taps, levels = choose(build(TinyViT), 32)
    layout = TokenLayout(prefix=PREFIX, grid=(4, 4))
    expected = [Tap("patch_embed", "patch_embed")]
    for number in (2, 4, 6, 8):
        module = f"blocks.{number - 1}"
        expected += [Tap(f"block{number}", module, tokens=layout, view="patch_grid"),
                     Tap(f"block{number}_cls", module, tokens=layout, view="class_token")]  # fmt: skip
    expected += [Tap("embedding", "head", "input"), Tap("logits", "head")]
    assert taps == expected
    assert levels == ["low", "low", "low", "mid", "mid", "high", "high", "high", "high", "high", "high"]
    assert taps[1].source == "blocks.1[patch tokens]" and taps[2].source == "blocks.1[class token]"


def test_vit_input_must_be_a_whole_number_of_patches():
    """The grid is size / patch: an input size with a partial patch is refused rather than silently cropped."""
    with pytest.raises(ExportError, match="36 is not a multiple of the patch size 8"):
        choose(build(TinyViT), 36)


def test_select_lays_patch_tokens_out_row_by_row():
    """Every value encodes (image, token, channel): the map must hold token prefix + row * w + column at [c, row,
    column], on a grid that is not square so rows and columns cannot be swapped unnoticed."""
    images, prefix, (height, width), channels = 2, 3, (2, 5), 4
    tokens = torch.arange(prefix + height * width).view(1, -1, 1)
    value = (
        10_000 * torch.arange(images).view(-1, 1, 1) + 100 * tokens + torch.arange(channels).view(1, 1, -1)
    ).float()
    layout = TokenLayout(prefix=prefix, grid=(height, width))
    grid = Tap("b", "b", tokens=layout, view="patch_grid").select(value)
    assert grid.shape == (images, channels, height, width)
    for n in range(images):
        for c in range(channels):
            for row in range(height):
                for column in range(width):
                    assert grid[n, c, row, column] == 10_000 * n + 100 * (prefix + row * width + column) + c
    cls = Tap("b_cls", "b", tokens=layout, view="class_token").select(value)
    assert torch.equal(cls, value[:, 0]) and cls.shape == (images, channels)
    assert Tap("a", "a").select(value) is value


def test_named_block_gives_a_map_and_its_class_token():
    """A user-named transformer block becomes two layers sharing its level; other modules stay as they are."""
    model = build(TinyViT)
    layout = TokenLayout(prefix=PREFIX, grid=(4, 4))
    taps, levels = named(model, 32, ["blocks.3", "patch_embed"], ["mid", "low"])
    assert taps == [Tap("blocks.3", "blocks.3", tokens=layout, view="patch_grid"),
                    Tap("blocks.3_cls", "blocks.3", tokens=layout, view="class_token"),
                    Tap("patch_embed", "patch_embed")]  # fmt: skip
    assert levels == ["mid", "mid", "low"]
    assert named(model, 32, ["blocks.3"], None)[1] == [None, None]


def test_named_unknown_module_suggests_the_nearest():
    with pytest.raises(ExportError, match=r"unknown layer 'blocks\.3\.atn'; did you mean blocks\.3\.attn"):
        named(build(TinyViT), 32, ["blocks.3.atn"], None)


def test_trace_of_a_model_that_takes_no_image_says_so():
    """A model that cannot run on a 1x3xHxW image is refused in one line, and leaves no hook behind."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    with pytest.raises(ExportError, match=r"not an image model: forward on a 1x3x32x32 image failed: RuntimeError"):
        trace(model, 32)
    assert not model[0]._forward_hooks and not model[1]._forward_hooks


@pytest.fixture(scope="module")
def vit_export(tmp_path_factory):
    """The tiny ViT exported as `exporter timm` would export it: automatic taps, ONNX, verified, model.json."""
    model = build(TinyViT)
    taps, levels = choose(model, 32)
    preprocess = Preprocess(size=[32, 32], resize=32, interpolation="bilinear")
    source = Source(kind="module", origin="tests.unit.test_auto_taps:TinyViT")
    return model, _export_torch("tiny-vit", model, taps, levels, preprocess, source, tmp_path_factory.mktemp("m"), None)


def test_vit_export_manifest(vit_export):
    """Block maps are token grids one patch apart that have seen the whole image; class tokens are vectors."""
    _, directory = vit_export
    manifest = load_manifest(directory / "model.json")
    blocks = [f"block{n}" for n in (2, 4, 6, 8)]
    assert [layer.name for layer in manifest.layers] == ["patch_embed", *(x for b in blocks for x in (b, f"{b}_cls")),
                                                         "embedding", "logits"]  # fmt: skip
    for name in blocks:
        layer = manifest.layer(name)
        assert layer.shape == [WIDTH, 4, 4] and layer.token_grid and layer.global_context
        assert (layer.stride, layer.receptive_field) == (PATCH, 32)
        assert set(layer.outputs) == {"none", "avg", "max"} and layer.source.endswith("[patch tokens]")
        cls = manifest.layer(f"{name}_cls")
        assert cls.shape == [WIDTH] and not cls.token_grid and (cls.stride, cls.receptive_field) == (None, None)
        assert cls.outputs == {"none": f"{name}_cls"}
    patch = manifest.layer("patch_embed")
    assert (patch.shape, patch.stride, patch.receptive_field) == ([WIDTH, 4, 4], PATCH, PATCH)
    assert not patch.token_grid and not patch.global_context
    assert manifest.layer("embedding").shape == [WIDTH] and manifest.layer("logits").shape == [CLASSES]
    assert manifest.verification.passed


def test_vit_export_maps_match_the_tokens(vit_export):
    """The ONNX block map at [c, row, column] is the torch block's token 3 + 4 * row + column, channel c."""
    model, directory = vit_export
    captured = {}
    hook = model.blocks[7].register_forward_hook(lambda _m, _a, out: captured.update(tokens=out.numpy()))
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(image)
    hook.remove()
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    grid, cls = session.run(["block8", "block8_cls"], {"input": image.numpy()})
    tokens = captured["tokens"]
    np.testing.assert_allclose(grid, tokens[:, PREFIX:].reshape(2, 4, 4, WIDTH).transpose(0, 3, 1, 2), atol=1e-4)
    np.testing.assert_allclose(cls, tokens[:, 0], atol=1e-4)


def test_a_manifest_from_before_token_grid_still_loads(vit_export, tmp_path):
    """Exports written before the field existed have no token_grid: they load, and no layer is a token grid."""
    _, directory = vit_export
    data = json.loads((directory / "model.json").read_text())
    for layer in data["layers"]:
        del layer["token_grid"]
    (tmp_path / "model.json").write_text(json.dumps(data))
    assert not any(layer.token_grid for layer in load_manifest(tmp_path / "model.json").layers)
