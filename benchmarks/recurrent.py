"""A real CNN + bidirectional LSTM OCR model: channels and hidden units removed, no retraining.

The model is ddddocr's float captcha recognizer (`common.onnx` in the `ddddocr` wheel, 13.5M params:
21 Conv + SiLU, a `C*H` reshape computed at run time, a bidirectional LSTM with 512 hidden units, a
Gemm over 8,210 characters; input [1, 1, 64, W]). Install it without touching onnxruntime:

    pip install --no-deps ddddocr==1.6.1 opencv-python-headless
    python benchmarks/recurrent.py [--ratios 0.2 0.4] [--test 300] [--calib 64]

Captcha-like strings (4-6 characters of lowercase letters and digits without 0/1/i/l/o) are rendered
here with PIL in DejaVu fonts at random offsets on a 64 x 192 canvas (a real-size input); calibration
and test images use different seeds. Preprocessing and CTC decoding are the library's own
(ddddocr.DdddOcr(beta=True) with its onnxruntime session swapped for the pruned model's).

Columns: `--ratio` removes that share of every prunable group's channels and hidden units; params
after pruning; exact match against the rendered strings and agreement with the unpruned model's
decoded strings (both case-insensitive: the model writes some lowercase letters as capitals); latency = median of
`--repeats` runs of the pruned model / the original, same process, interleaved, onnxruntime CPU with
graph optimizations on, at [1, 1, 64, 192].
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont

from onnxprune import PruneOptions, prune, save_model
from onnxprune.pipeline import inspect_model

CHARS = "abcdefghjkmnpqrstuvwxyz23456789"
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
SIZE = (192, 64)


def render(count: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    rng = random.Random(seed)
    fonts = [ImageFont.truetype(str(FONT_DIR / f), 36) for f in FONTS if (FONT_DIR / f).exists()]
    fonts = fonts or [ImageFont.load_default(size=36)]
    images, labels = [], []
    for _ in range(count):
        text = "".join(rng.choice(CHARS) for _ in range(rng.randint(4, 6)))
        image = Image.new("RGB", SIZE, tuple(rng.randint(215, 255) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(2):  # two thin noise lines, as captchas have
            points = [(rng.randint(0, SIZE[0]), rng.randint(0, SIZE[1])) for _ in range(2)]
            draw.line(points, fill=tuple(rng.randint(120, 200) for _ in range(3)), width=1)
        draw.text((rng.randint(4, 16), rng.randint(4, 12)), text, fill=tuple(rng.randint(0, 90) for _ in range(3)),
                  font=rng.choice(fonts))  # fmt: skip
        images.append(image)
        labels.append(text)
    return images, labels


def decode_all(ocr, model_path: str, images) -> list[str]:
    ocr.ocr_engine.session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return [ocr.classification(image) for image in images]


def latency_ratio(original: str, pruned: str, feed: np.ndarray, repeats: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sessions = [ort.InferenceSession(p, options, providers=["CPUExecutionProvider"]) for p in (original, pruned)]
    name = sessions[0].get_inputs()[0].name
    times: list[list[float]] = [[], []]
    for k in range(repeats + 3):
        for i, sess in enumerate(sessions):
            start = time.perf_counter()
            sess.run(None, {name: feed})
            if k >= 3:
                times[i].append(time.perf_counter() - start)
    return float(np.median(times[1]) / np.median(times[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--methods", nargs="+", default=["magnitude", "obs"])
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    import ddddocr  # the model's own library: preprocessing, charset, CTC decoding

    model_path = str(Path(ddddocr.__file__).parent / "common.onnx")
    ocr = ddddocr.DdddOcr(beta=True, show_ad=False)
    calib_images, _ = render(args.calib, seed=1)
    test_images, labels = render(args.test, seed=2)
    calib = np.concatenate([ocr.ocr_engine._preprocess_image(im, False) for im in calib_images]).astype(np.float32)
    feed = calib[:1]
    dense = decode_all(ocr, model_path, test_images)
    _, totals = inspect_model(model_path)
    print(f"model: {model_path}\nprunable share of params: {totals['prunable_params_share']:.1%}")
    print(f"test images: {args.test}, calibration images: {args.calib}\n")
    rows = [("original", "-", totals["params"], _accuracy(dense, labels), 1.0, 1.0)]
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "calib.npz"
        np.savez(npz, **{ocr.ocr_engine.session.get_inputs()[0].name: calib})
        for ratio in args.ratios:
            for method in args.methods:
                start = time.perf_counter()
                result = _prune(model_path, method, ratio, npz, args.calib)
                seconds = time.perf_counter() - start
                out = str(Path(tmp) / f"{method}_{ratio}.onnx")
                save_model(result.model, out)
                strings = decode_all(ocr, out, test_images)
                agree = _accuracy(strings, [d.lower() for d in dense])
                ratio_ms = latency_ratio(model_path, out, feed, args.repeats)
                rows.append((method, ratio, result.report["params_after"], _accuracy(strings, labels), agree, ratio_ms))
                print(f"  {method} {ratio}: {seconds:.1f} s", flush=True)
    print("\n| method | removed | params (removed) | exact match | agrees with original | latency vs original |")
    print("|---|---|---|---|---|---|")
    for method, ratio, params, accuracy, agree, lat in rows:
        removed = "-" if ratio == "-" else f"{ratio:.0%}"
        gone = 1 - params / totals["params"]
        print(f"| {method} | {removed} | {params:,} ({gone:.1%}) | {accuracy:.3f} | {agree:.3f} | {lat:.2f} |")


def _prune(model_path: str, method: str, ratio: float, calib: Path, samples: int):
    """prune() with statistics batches of 1 (the model's batch axis is static)."""
    try:  # the pipeline options as a value (the pipeline after the options refactor)
        from onnxprune.pipeline import PipelineOptions
    except ImportError:
        return prune(model_path, method, PruneOptions(ratio=ratio, extra={"batch_size": 1}),
                     calibration=calib, calib_samples=samples, run_validation=False)  # fmt: skip
    pipeline = PipelineOptions(batch_size=1, calib_samples=samples, run_validation=False)
    return prune(model_path, method, PruneOptions(ratio=ratio), calibration=calib, pipeline=pipeline)


def _accuracy(strings: list[str], labels: list[str]) -> float:
    return float(np.mean([s.lower() == t for s, t in zip(strings, labels, strict=True)]))


if __name__ == "__main__":
    main()
