"""ONNX Runtime releases against each other on the same graphs, per serving shape (issue 13).

Each release is installed once into its own folder (`pip install --no-deps --target`), and a child process with that
folder first on its path times the graphs with the package's own sessions and shapes (`benchmark.serving_latency`).
Releases cannot share a process, so they alternate: every round runs each release once, in turn, and the figure is
the median over rounds; ratios are against the first release listed, round by round.

    python benchmarks/ort_versions.py outputs/rotten_tomatoes_offline/student_distilled/onnx \\
        --versions 1.32.0 1.28.0 1.24.4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
import onnxruntime
from transformers import AutoTokenizer
from trainer_ext.deployment.benchmark import ClassifierRunner, serving_latency
from trainer_ext.data.loading import load_offline_rotten_tomatoes
folder, runs = sys.argv[1], int(sys.argv[2])
graphs = json.loads(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(folder)
texts = [str(t) for t in load_offline_rotten_tomatoes()["validation"]["text"][:32]]
runners = {g: ClassifierRunner(f"{folder}/{g}", tokenizer) for g in graphs}
shapes = serving_latency(runners, texts, runs=runs, shapes=["real_length", "fixed_length", "batch_32"])
print(json.dumps({"version": onnxruntime.__version__, "file": onnxruntime.__file__, "shapes": shapes}))
"""


def install(version: str, cache: Path) -> Path:
    target = cache / f"onnxruntime-{version}"
    if not (target / "onnxruntime").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(target),
                f"onnxruntime=={version}",
            ],
            check=True,
        )
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx_folder", type=Path, help="A quantize_model output's onnx/ folder.")
    parser.add_argument("--versions", nargs="+", default=["1.32.0", "1.28.0", "1.24.4"])
    parser.add_argument("--graphs", nargs="+", default=["model_quantized.onnx", "model.onnx"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "trainer-ext-ort")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    targets = {v: install(v, args.cache) for v in args.versions}
    from trainer_ext.deployment.benchmark import cpu_description

    print(f"CPU: {cpu_description()}; graphs in {args.onnx_folder}; {args.rounds} rounds", flush=True)
    measured: dict[str, list[dict]] = {v: [] for v in args.versions}
    for r in range(args.rounds):
        for version, target in targets.items():
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.onnx_folder), str(args.runs), json.dumps(args.graphs)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert result["version"] == version, f"{target} gave onnxruntime {result['version']} ({result['file']})"
            measured[version].append(result["shapes"])
            print(f"round {r + 1}, onnxruntime {version}: done", flush=True)
    base = args.versions[0]
    print(
        "\n| graph | shape | "
        + " | ".join(f"ORT {v} ms" for v in args.versions)
        + " | "
        + " | ".join(f"{v} / {base}" for v in args.versions[1:])
        + " |"
    )
    print("|---|---|" + "---|" * (2 * len(args.versions) - 1))
    table = {}
    for graph in args.graphs:
        for shape in ("real_length", "fixed_length", "batch_32"):
            ms = {v: statistics.median(m[graph][shape]["median_ms"] for m in measured[v]) for v in args.versions}
            ratios = {
                v: statistics.median(
                    m[graph][shape]["median_ms"] / b[graph][shape]["median_ms"]
                    for m, b in zip(measured[v], measured[base])
                )
                for v in args.versions[1:]
            }
            table[f"{graph}/{shape}"] = {"ms": ms, "ratio_vs_first": ratios}
            print(
                f"| {graph} | {shape} | "
                + " | ".join(f"{ms[v]:.3f}" for v in args.versions)
                + " | "
                + " | ".join(f"{ratios[v]:.2f}" for v in args.versions[1:])
                + " |"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"cpu": cpu_description(), "versions": args.versions, "table": table}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
