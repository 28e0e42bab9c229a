"""Ratios against the issue's targets, a markdown table and a PNG chart from one run's results."""

from __future__ import annotations

from pathlib import Path

TARGETS = {
    "service_c8_over_ceiling": (">=", 0.9),
    "service_c8_over_handwritten_ort_c8": (">=", 1.25),
    "service_c8_over_handwritten_torch_c8": (">=", 3.0),
    "low_only_over_all_levels_p50_c1": ("<=", 0.5),
    "low_only_over_all_levels_compute": ("<=", 0.5),
    "service_p50_c1_minus_ceiling_ms": ("<=", 5.0),
    "service_rss_growth_mib": ("<=", 50.0),
    "int8_over_fp32_compute_batch8": (">=", 1.8),
    "service_int8_c8_over_fp32_c8": (">=", 1.5),
}


def _run(results: dict, scenario: str, concurrency: int, body: str = "raw") -> dict:
    for row in results["runs"]:
        if row["scenario"] == scenario and row["concurrency"] == concurrency and row["body"] in (body, "-"):
            return row
    raise KeyError(f"no run {scenario} c={concurrency} {body}")


def p50_ms(row: dict) -> float:
    return row["p50_ms"] if "p50_ms" in row else row["latency_us"]["p50"] / 1e3


def p99_ms(row: dict) -> float | None:
    if "p99_ms" in row:
        return row["p99_ms"]
    return row["latency_us"]["p99"] / 1e3 if "latency_us" in row else None


def _mean(results: dict, scenario: str) -> float:
    """Mean images/s of a scenario's runs (the alternated fp32/int8 compute runs)."""
    rates = [row["images_per_s"] for row in results["runs"] if row["scenario"] == scenario]
    return sum(rates) / len(rates)


def _best_sweep(results: dict, label: str, photos: str) -> float:
    """The fastest configuration of a hand-written route on a photo set (bench/baseline_sweep.py)."""
    return max(
        r["images_per_s"] for r in results["runs"] if r["scenario"] == f"{label} sweep" and r["photos"] == photos
    )


def _divide(numerator: float, denominator: float) -> float | None:
    """None when a run completed no request (only in --quick runs on a loaded machine)."""
    return numerator / denominator if denominator else None


def ratios(results: dict) -> dict:
    service_c8 = max(_run(results, "service", 8, body)["images_per_s"] for body in ("raw", "multipart", "json"))
    figures = {
        "service_c8_over_ceiling": _divide(service_c8, _run(results, "ceiling pipelined", 0)["images_per_s"]),
        "service_c8_over_handwritten_ort_c8": _divide(service_c8, _run(results, "hand-written ORT", 8)["images_per_s"]),
        "service_c8_over_handwritten_torch_c8": _divide(
            service_c8, _run(results, "hand-written PyTorch", 8)["images_per_s"]
        ),
        "low_only_over_all_levels_p50_c1": _divide(
            p50_ms(_run(results, "service low levels only", 1)), p50_ms(_run(results, "service", 1))
        ),
        "low_only_over_all_levels_compute": _divide(
            results["server_timings_ms"]["levels=low"]["compute"], results["server_timings_ms"]["all levels"]["compute"]
        ),
        "low_only_over_all_levels_throughput_c8": _divide(
            _run(results, "service", 8)["images_per_s"], _run(results, "service low levels only", 8)["images_per_s"]
        ),
        "service_p50_c1_minus_ceiling_ms": p50_ms(_run(results, "service", 1))
        - p50_ms(_run(results, "ceiling sequential", 1)),
        "batch_extract_over_ceiling": _divide(
            _run(results, "batch extract (local engine)", 0)["images_per_s"],
            _run(results, "ceiling pipelined", 0)["images_per_s"],
        ),
        "service_rss_growth_mib": results["service_rss_mib_after"] - results["service_rss_mib_before"],
        "stem_maps_base64_fp16_over_json_p50": _divide(
            p50_ms(_run(results, "service stem maps base64", 1)), p50_ms(_run(results, "service stem maps json", 1))
        ),
        "stem_maps_safetensors_over_json_p50": _divide(
            p50_ms(_run(results, "service stem maps safetensors", 1)),
            p50_ms(_run(results, "service stem maps json", 1)),
        ),
        "stem_maps_safetensors_over_json_bytes": _divide(
            _run(results, "service stem maps safetensors", 1)["response_bytes"] or 0,
            _run(results, "service stem maps json", 1)["response_bytes"] or 0,
        ),
        "stem_maps_safetensors_fp16_over_base64_fp16_bytes": _divide(
            _run(results, "service stem maps safetensors fp16", 1)["response_bytes"] or 0,
            _run(results, "service stem maps base64", 1)["response_bytes"] or 0,
        ),
        "stem_maps_v2_binary_over_json_p50": _divide(
            p50_ms(_run(results, "service stem maps v2 binary", 1, "v2")),
            p50_ms(_run(results, "service stem maps json", 1)),
        ),
        "stem_maps_v2_binary_over_safetensors_p50": _divide(
            p50_ms(_run(results, "service stem maps v2 binary", 1, "v2")),
            p50_ms(_run(results, "service stem maps safetensors", 1)),
        ),
        "stem_maps_v2_binary_over_json_bytes": _divide(
            _run(results, "service stem maps v2 binary", 1, "v2")["response_bytes"] or 0,
            _run(results, "service stem maps json", 1)["response_bytes"] or 0,
        ),
        "service_v2_binary_c8_over_raw_c8": _divide(
            _run(results, "service v2 binary", 8, "v2")["images_per_s"], _run(results, "service", 8)["images_per_s"]
        ),
        "int8_over_fp32_compute_batch8": _divide(_mean(results, "ceiling compute int8"),
                                                 _mean(results, "ceiling compute fp32")),
        "int8_over_fp32_pipelined": _divide(_run(results, "ceiling pipelined int8", 0)["images_per_s"],
                                            _run(results, "ceiling pipelined", 0)["images_per_s"]),
        "service_int8_c8_over_fp32_c8": _divide(_run(results, "service int8", 8)["images_per_s"],
                                                _run(results, "service", 8)["images_per_s"]),
        "service_int8_small_c8_over_fp32_small_c8": _divide(
            _run(results, "service int8 small photos", 8)["images_per_s"],
            _run(results, "service small photos", 8)["images_per_s"]),
        "service_small_c8_over_best_handwritten_ort_small": _divide(
            _run(results, "service small photos", 8)["images_per_s"],
            _best_sweep(results, "hand-written ORT", "small")),
        "service_small_c8_over_best_handwritten_torch_small": _divide(
            _run(results, "service small photos", 8)["images_per_s"],
            _best_sweep(results, "hand-written PyTorch", "small")),
    }  # fmt: skip
    return {name: None if value is None else round(value, 3) for name, value in figures.items()}


def verdict(name: str, value: float | None) -> str:
    if name not in TARGETS or value is None:
        return ""
    op, target = TARGETS[name]
    met = value >= target if op == ">=" else value <= target
    return f"{op} {target} {'met' if met else 'MISSED'}"


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"{machine['date']}, {machine['cpus']} CPUs, Python {machine['python']}, ONNX Runtime "
        f"{machine['onnxruntime']}, EfficientNet-Lite0 fp32 (and int8 where a row says so), "
        f"{len(results['photos'])} JPEG photos of mixed sizes (small photos: those of at most 640 px), "
        f"{results['seconds_per_run']:g} s per run (sweep runs half that), one image per request, load from wrk.",
        "",
        "| scenario | concurrency | body | images/s | p50 ms | p99 ms | failed | answer bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["runs"]:
        p99, rate = p99_ms(row), f"{row['images_per_s']:.1f}"
        scenario = row["scenario"] + (f" ({row['photos']} photos; {row['config']})" if "photos" in row else "")
        scenario += f" ({row['config']})" if "config" in row and "photos" not in row else ""
        lines.append(
            f"| {scenario} | {row['concurrency'] or '-'} | {row['body']} | {row['images_per_s']:.1f} | "
            f"{p50_ms(row):.1f} | {'-' if p99 is None else f'{p99:.1f}'} | {row.get('failed', 0)} | "
            f"{row.get('response_bytes') or '-'} |"
            if "latency_us" in row or "p50_ms" in row
            else f"| {scenario} | {row['concurrency'] or '-'} | {row['body']} | {rate} | - | - | 0 | - |"
        )
    lines += ["", "| ratio | value | target |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {verdict(name, value)} |" for name, value in results["ratios"].items()]
    lines += [
        "",
        f"Server-side timings of one request holding all {len(results['photos'])} photos (median ms):",
        "",
        "| request | parse | decode | compute | total |",
        "|---|---|---|---|---|",
    ]
    for query, timing in results["server_timings_ms"].items():
        lines.append(
            f"| {query} | {timing['parse']:.1f} | {timing['decode']:.1f} | {timing['compute']:.1f} | "
            f"{timing['total']:.1f} |"
        )
    rss = (results["service_rss_mib_before"], results["service_rss_mib_after"])
    lines += ["", f"Service RSS (master + workers): {rss[0]:.0f} MiB before, {rss[1]:.0f} MiB after the runs."]
    checks = results.get("checks", {})
    if checks:
        lines += [
            "",
            "Correctness before timing (largest |service - in-process| over every layer and photo; the V2 route's "
            "answers against /v1's): "
            + ", ".join(f"{k} = {v:.2e}" if isinstance(v, float) else f"{k} = {v}" for k, v in checks.items()),
        ]
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    """Images/s at concurrency 8 (ceiling for reference) and p50 latency at concurrency 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    throughput = [("ceiling (in-process)", _run(results, "ceiling pipelined", 0)["images_per_s"])]
    throughput += [("batch extract", _run(results, "batch extract (local engine)", 0)["images_per_s"])]
    throughput += [
        (f"service {body}", _run(results, "service", 8, body)["images_per_s"]) for body in ("raw", "multipart", "json")
    ]
    throughput += [("service int8", _run(results, "service int8", 8)["images_per_s"])]
    throughput += [("service low only", _run(results, "service low levels only", 8)["images_per_s"])]
    throughput += [
        (name, _run(results, name, 8)["images_per_s"]) for name in ("hand-written ORT", "hand-written PyTorch")
    ]
    latency = [
        ("ceiling", p50_ms(_run(results, "ceiling sequential", 1))),
        ("service", p50_ms(_run(results, "service", 1))),
        ("service int8", p50_ms(_run(results, "service int8", 1))),
        ("service low only", p50_ms(_run(results, "service low levels only", 1))),
    ]
    latency += [(name, p50_ms(_run(results, name, 1))) for name in ("hand-written ORT", "hand-written PyTorch")]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    colours = ["#777777", "#8c564b", "#1f77b4", "#1f77b4", "#1f77b4", "#17becf", "#2ca02c", "#d62728", "#ff7f0e"]
    left.barh([n for n, _ in throughput][::-1], [v for _, v in throughput][::-1], color=colours[::-1])
    left.set_xlabel("images/s at concurrency 8 (higher is better)")
    right.barh([n for n, _ in latency][::-1], [v for _, v in latency][::-1], color="#9467bd")
    right.set_xlabel("p50 latency ms at concurrency 1 (lower is better)")
    for axis in (left, right):
        for patch in axis.patches:
            axis.annotate(
                f"{patch.get_width():.1f}",
                (patch.get_width(), patch.get_y() + patch.get_height() / 2),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
    figure.suptitle(f"EfficientNet-Lite0, {results['machine']['cpus']} CPUs, pooled embeddings of every level")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
