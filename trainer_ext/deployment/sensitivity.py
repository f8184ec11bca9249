"""The INT8 search's retry when no candidate passed (`retry_sensitive_nodes`): measure, node by node, how much keeping
a quantizable node in FP32 recovers of the metric, then build, time and evaluate the fastest rejected candidate with
the nodes that recover most kept in FP32.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from trainer_ext.deployment.candidates import quantizable_nodes
from trainer_ext.deployment.evaluation import flag_timing

if TYPE_CHECKING:
    from trainer_ext.deployment.int8_search import Int8Search

# What a candidate's build, timing and evaluation add to its description.
_MEASURED = ("accuracy", "metric_value", "passed", "status", "latency", "shapes", "warnings", "file", "size_mb")


def retry_sensitive_nodes(search: Int8Search) -> None:
    """When no candidate passed: keep the `sensitivity_top_k` nodes that matter most in FP32 in the fastest
    rejected candidate and try that configuration too (`chosen` when it passes and is faster than FP32)."""
    rejected = [c for c in search.candidates if c.get("passed") is False and c.get("backend") != "openvino"]
    if not rejected:
        return
    excluded = _most_sensitive_nodes(search, rejected[0])
    if not excluded:
        return
    retry = _retry_without(search, rejected[0], excluded)
    search.candidates.append(retry)
    if retry["passed"] and retry["faster_than_fp32"]:
        search.chosen = retry


def _most_sensitive_nodes(search: Int8Search, base: dict[str, Any]) -> list[str]:
    """Measure, node by node, how much keeping it in FP32 in `base` recovers of the metric (on the first
    `sensitivity_samples` sentences); the `sensitivity_top_k` that recover most.

    A BERT-Base-class model has about a hundred quantizable nodes, each probe a quantization and an evaluation:
    the probing stops at the search's time budget and works with the nodes measured by then.
    """
    args, builder = search.args, search.builder
    operators = args.operators_to_quantize or ["MatMul", "Gemm", "Attention"]
    nodes = quantizable_nodes(builder.source_graph(base), operators)
    seen = min(args.sensitivity_samples, len(search.evaluation.labels))
    base_value, _ = search.scores(base, seen)
    gains = {}
    for i, node in enumerate(nodes):
        if search.out_of_time():
            search.report["sensitivity_stopped"] = f"time budget: {i} of {len(nodes)} nodes probed"
            break
        probe = {**base, "name": f"{base['name']}_probe{i}", "exclude": base.get("exclude", []) + [node]}
        try:
            builder.build(probe)
        except (ValueError, RuntimeError):
            continue
        gains[node] = search.scores(probe, seen)[0] - base_value
        os.remove(builder.cand_dir / probe["file"])
    worst = sorted(gains, key=lambda n: -gains[n])[: args.sensitivity_top_k]
    search.report["sensitivity"] = {
        "base": base["name"],
        "base_subset_metric_value": base_value,
        "samples": seen,
        "gain_when_kept_fp32": gains,
        "excluded": worst,
    }
    return worst


def _retry_without(search: Int8Search, base: dict[str, Any], excluded: list[str]) -> dict[str, Any]:
    """`base` with the `excluded` nodes kept in FP32: built, timed, evaluated."""
    name, exclude = f"{base['name']}_exclude{len(excluded)}", base.get("exclude", []) + excluded
    retry = {**base, "name": name, "exclude": exclude}
    for key in _MEASURED:
        retry.pop(key, None)
    search.builder.build(retry)
    # Timed against FP32 in the same interleaved group, for the same reason as the candidates.
    shaped = search.evaluation.latencies(
        {"retry": search.builder.cand_dir / retry["file"], "fp32": search.work / search.fp32["file"]}
    )
    retry["latency"], retry["shapes"] = shaped["retry"]["fixed_length"], shaped["retry"]
    search.evaluate(retry)
    flag_timing(retry)
    fp32_ms = shaped["fp32"]["fixed_length"]["median_ms"]
    retry["faster_than_fp32"] = (not search.args.require_speedup) or retry["latency"]["median_ms"] < fp32_ms
    retry["status"] = "evaluated (after excluding the most sensitive nodes)"
    return retry
