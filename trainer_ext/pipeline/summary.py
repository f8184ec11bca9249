"""The run's summary as `trainer-ext run` prints it: every measured variant on one line each, then what was chosen
(selection, guard, precision, the transfer set's sources) and how long each stage took."""

from __future__ import annotations

from typing import Any

from trainer_ext.pipeline.shared import TRANSFER_LABELLING
from trainer_ext.reporting.results import latency_warnings


def summary_table(results: dict[str, Any]) -> str:
    """The run's measured variants, one line each (test split). Latency in ms: batch 1 at each sentence's own length
    (without and with tokenization), batch 1 padded to the fixed length (the speed-up's basis), and per sentence in
    batches of 32."""
    length = results.get("latency", {}).get("sequence_length", 64)
    header = (
        f"{'variant':<26} {'runtime':<18} {'accuracy':>9} {'real ms':>8} {'+tok ms':>8} {f'len{length} ms':>9} "
        f"{'b32 ms':>7} {'speed-up':>9} {'MB':>7} {'params':>12}"
    )
    lines = [header, "-" * len(header)]
    for name, v in results["variants"].items():
        if v.get("accuracy") is None:
            lines.append(f"{name:<26} not measured: {v.get('note', '')}")
            continue
        params = f"{v['parameters']:,}" if v.get("parameters") else "-"
        shapes = v.get("shapes") or {}
        ms = {s: shapes.get(s, {}).get("median_ms", float("nan")) for s in ("real_length", "real_length_tokenized")}
        lines.append(
            f"{name:<26} {v['runtime']:<18} {100 * v['accuracy']:>8.2f}% {ms['real_length']:>8.2f} "
            f"{ms['real_length_tokenized']:>8.2f} {v['latency_ms']:>9.2f} "
            f"{shapes.get('batch_32', {}).get('median_ms', float('nan')):>7.2f} "
            f"{v.get('speedup_vs_teacher', float('nan')):>8.2f}x {v['size_mb']:>7.1f} {params:>12}"
        )
    latency = results.get("latency", {})
    if latency.get("cpu"):
        versions = sorted({v["runtime_version"] for v in results["variants"].values() if v.get("runtime_version")})
        lines.append(f"measured on {latency['cpu']}, {latency.get('threads')} threads; " + ", ".join(versions))
    lines += [f"INCONSISTENT {line}" for line in latency_warnings(results["variants"])]
    selection = results.get("selection")
    if selection:
        met = "met" if selection["met"] else "NOT MET by any candidate, the closest shipped"
        lines.append(f"selection: {selection['shipped']} ({met}): {selection['reason']}")
        for r in selection["candidates"]:
            figures = (
                f"INT8 {100 * r['int8_accuracy']:.2f}% on {selection['split']}, {r['int8_real_length_ms']:.2f} ms"
                if r.get("status") == "trained"
                else r.get("error", "")
            )
            lines.append(f"  {r['student']:<24} {r.get('status', '').split(':')[0]:<12} {figures}")
    if results.get("guard"):
        lines.append(f"shipped {results['guard']['shipped']}: {results['guard']['reason']}")
        if results["guard"].get("teacher_note"):
            lines.append(f"NOTE: {results['guard']['teacher_note']}")
    if results.get("precision"):
        lines.append("precision: " + ", ".join(f"{k} {v['precision']}" for k, v in results["precision"].items()))
        fallback = (results["precision"].get(TRANSFER_LABELLING) or {}).get("fallback")
        if fallback:
            lines.append(f"transfer labelling: {fallback}")
        sampling = (results["precision"].get("sampling") or {}).get("fallback")
        if sampling:
            lines.append(f"sampling: {sampling}")
    sources = (results.get("augmentation") or {}).get("sources")
    if sources:
        lines.append("transfer set: " + ", ".join(f"{count:,} {source}" for source, count in sources.items()))
    if results.get("stages"):
        lines.append("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["stages"].items()))
    return "\n".join(lines)
