"""Shape recovery on real exports: the share of parameters `inspect` finds prunable with and without
recovering the shapes ONNX shape inference leaves unknown (onnxprune/shape_recovery.py).

    python benchmarks/unknown_shapes.py [MODEL.onnx ...]

Without arguments it fetches the wheel of `rapidocr-onnxruntime` (PaddleOCR models converted by
paddle2onnx: a text detector, a text recognizer with an SVTR neck, a direction classifier) with
`pip download --no-deps` into a temporary folder and reads the models it ships.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from onnxprune import graph, shape_recovery
from onnxprune.pipeline import inspect_model


def _wheel_models(folder: Path) -> list[Path]:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "rapidocr-onnxruntime==1.4.4", "-d", folder],
        check=True,
    )
    wheel = next(folder.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".onnx")]
        archive.extractall(folder, names)
    return sorted(folder / n for n in names)


def _share(path: Path, recover: bool) -> tuple[float, int, float]:
    graph.recover_shapes = shape_recovery.recover_shapes if recover else (lambda index: None)
    start = time.perf_counter()
    analysis, totals = inspect_model(str(path))
    seconds = time.perf_counter() - start
    return totals["prunable_params_share"], totals["prunable_groups"], seconds


def main(paths: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        models = [Path(p) for p in paths] or _wheel_models(Path(tmp))
        print(f"{'model':40} {'prunable without':>17} {'with recovery':>14} {'inspect s (without/with)':>25}")
        for path in models:
            before, groups_before, t0 = _share(path, recover=False)
            after, groups_after, t1 = _share(path, recover=True)
            print(
                f"{path.name:40} {100 * before:>8.1f}% ({groups_before:>3}) {100 * after:>6.1f}% ({groups_after:>3})"
                f" {t0:>12.1f} / {t1:.1f}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
