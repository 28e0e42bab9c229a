"""The study's two figures, drawn from insight.json alone (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

LEVEL_COLOURS = {"low": "#0288d1", "mid": "#f57c00", "high": "#d32f2f"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tick(layer: dict) -> str:
    field = layer["receptive_field"]
    return f"{layer['name']}\n{'RF ' + str(field) if field else 'global'}"


def _shade_levels(axis, layers: list[dict]) -> None:
    for index, layer in enumerate(layers):
        axis.axvspan(index - 0.5, index + 0.5, color=LEVEL_COLOURS[layer["level"]], alpha=0.06, linewidth=0)


def plot_invariance(result: dict, path: Path) -> Path:
    """Invariance score per transform across depth, before pooling (maps) and after (embeddings), plus raw cosines."""
    plt = _pyplot()
    layers = result["layers"]
    spatial = [layer for layer in layers if layer["different_images_map"] is not None]
    figure, (maps, pooled, raw) = plt.subplots(1, 3, figsize=(19, 5.6), constrained_layout=True)
    for kind in result["transforms"]:
        (line,) = maps.plot(range(len(spatial)), [layer["transforms"][kind]["map"]["score"] for layer in spatial],
                            marker="o", label=kind)  # fmt: skip
        colour = line.get_color()
        pooled.plot(range(len(layers)), [layer["transforms"][kind]["score"] for layer in layers], marker="o",
                    color=colour, label=kind)  # fmt: skip
        raw.plot(range(len(layers)), [layer["transforms"][kind]["similarity"] for layer in layers], marker="o",
                 color=colour, label=kind)  # fmt: skip
    raw.plot(range(len(layers)), [layer["different_images"] for layer in layers], "k--", marker="s",
             label="two different photos")  # fmt: skip
    maps.set_title("Before pooling: the maps, position by position")
    pooled.set_title("After global average pooling: the embeddings")
    raw.set_title("After pooling, raw cosines (dashed: different photos)")
    for axis in (maps, pooled):
        axis.set_ylabel("invariance score  (same − different) / (1 − different)")
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set_ylim(min(-0.05, axis.get_ylim()[0]), 1.03)
    raw.set_ylabel("cosine similarity to the plain view")
    for axis, shown in ((maps, spatial), (pooled, layers), (raw, layers)):
        _shade_levels(axis, shown)
        axis.set_xticks(range(len(shown)), [_tick(layer) for layer in shown], fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    maps.legend(fontsize=8, loc="lower right")
    raw.legend(fontsize=8, loc="lower left")
    figure.suptitle(
        f"{result['model']}: {len(result['photos'])} photos; 1 = the transform changes nothing, 0 = it moves the "
        "features as far as swapping in another photo; tint = level (low, mid, high)"
    )
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_receptive_fields(result: dict, path: Path) -> Path:
    """Receptive field and stride per spatial layer (log scale) against the input size."""
    plt = _pyplot()
    layers = [layer for layer in result["layers"] if layer["receptive_field"]]
    x = range(len(layers))
    size = max(result["input_size"])
    figure, axis = plt.subplots(figsize=(8, 4.6), constrained_layout=True)
    fields = [layer["receptive_field"] for layer in layers]
    strides = [layer["stride"] for layer in layers]
    axis.plot(x, fields, marker="o", label="receptive field (px)")
    axis.plot(x, strides, marker="s", label="stride (px)")
    axis.axhline(size, color="grey", linestyle="--", label=f"input size ({size} px)")
    for index, (field, stride) in enumerate(zip(fields, strides, strict=True)):
        for value, offset in ((field, 6), (stride, -13)):
            axis.annotate(str(value), (index, value), textcoords="offset points", xytext=(0, offset), ha="center",
                          fontsize=8)  # fmt: skip
    _shade_levels(axis, layers)
    axis.set_yscale("log", base=2)
    axis.set_xticks(list(x), [layer["name"] for layer in layers])
    axis.set_ylabel("input pixels (log scale)")
    axis.set_title(f"{result['model']}: how far each layer sees, and how coarse its grid is")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="upper left")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_retrieval(result: dict, path: Path) -> Path:
    """Top-1 hit rate per transform (rows, overall last) and layer (columns, low to high), chosen design first;
    the drawn numbers ride along in the PNG's `retrieval` text chunk, so a reader can check them against the JSON."""
    import json

    from insight.retrieval import DESIGNS, grid

    plt = _pyplot()
    designs = sorted(DESIGNS, key=lambda design: design != result["chosen"])
    tables = {design: grid(result, design) for design in designs}
    figure, axes = plt.subplots(1, len(designs), figsize=(17, 5.4), constrained_layout=True)
    for axis, design in zip(axes, designs, strict=True):
        _heat_map(axis, tables[design], result["designs"][design], chosen=design == result["chosen"])
    figure.colorbar(axes[-1].images[0], ax=axes, shrink=0.8, label="top-1 hit rate")
    figure.suptitle(
        f"{result['model']}: {len(result['photos'])} photos; does the nearest indexed embedding belong to the "
        "query's photo? (average-pooled, cosine, EmbeddedIndex)"
    )
    figure.savefig(path, dpi=100, metadata={"retrieval": json.dumps(tables)})
    plt.close(figure)
    return path


def _heat_map(axis, table: dict, design: dict, chosen: bool) -> None:
    """One design's cells: hit rate as colour and number (and the plain design's mean margin under it)."""
    rates = table["hit_rate"]
    axis.imshow(rates, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for row, values in enumerate(rates):
        for column, rate in enumerate(values):
            text = f"{rate:.2f}\nm {table['margin'][row][column]:+.2f}" if "margin" in table else f"{rate:.2f}"
            axis.text(column, row, text, ha="center", va="center", fontsize=8,
                      fontweight="bold" if rate < 1 else "normal")  # fmt: skip
    axis.axhline(len(rates) - 1.5, color="black", linewidth=1.5)  # the overall row below the kinds
    axis.set_yticks(range(len(table["rows"])), table["rows"])
    axis.set_xticks(range(len(table["columns"])), [f"{name}\n{level}" for name, level in
                                                    zip(table["columns"], table["levels"], strict=True)])  # fmt: skip
    for label, level in zip(axis.get_xticklabels(), table["levels"], strict=True):
        label.set_color(LEVEL_COLOURS[level])
    database = "one plain view per photo" if "margin" in table else "every view (query's own entry skipped)"
    axis.set_title(f"{'chosen: ' if chosen else ''}database = {database}\n{design['queries']} queries, "
                   f"{design['database']} entries, chance {design['chance']:.2f}"
                   + ("; m = mean margin" if "margin" in table else ""), fontsize=10)  # fmt: skip
