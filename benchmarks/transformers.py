"""Transformers, raw and fused: what prunes, and what pruning costs (output cosine, task accuracy).

    python benchmarks/transformers.py [--ratios 0.3 0.5] [--methods magnitude obs]   # tiny test models
    python benchmarks/transformers.py --real [--cache DIR]                             # a real recognizer

Tiny models: the random-initialized models of tests/data/transformers (BERT, ViT, GPT-2, a Llama-style
decoder with 2 KV heads for 4 query heads, with and without KV cache; each raw torch export and after
onnxruntime's transformer optimizer). Prints per model: the share of the non-embedding parameters
that sits in prunable groups, the FFN-neuron and head groups, and per method and ratio the output
cosine to the original on 64 generated inputs (token ids 0..95 or normal pixels), calibrating on 64
others. The weights are random, so the cosines show that pruning runs end to end on these graphs,
not what a trained model would keep.

--real: the pretrained PP-OCRv4 text recognizer that the `rapidocr_onnxruntime` wheel ships (a CNN
backbone, then SVTR mixing blocks: multi-head self-attention, 8 heads of 15, and an FFN of 240, exported
by paddle2onnx), fetched with `pip download` into --cache (default ~/.cache/onnxprune-bench). Inputs:
phrases of real English text (the GPL-3 text of /usr/share/common-licenses) rendered with PIL in DejaVu
fonts at the recognizer's 48-pixel height; 64 calibrate (--calib), 128 others are read back (--check).
Only the transformer part is pruned (`--include MatMul`: the attention heads and FFN neurons of both
blocks) at each ratio, raw and after onnxruntime's optimizer; the task metric is the share of phrases
read exactly and the character accuracy (1 - edit distance / length) with the wheel's own character
list and CTC decoding.
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx

from onnxprune import PruneOptions, prune
from onnxprune.errors import OnnxPruneError

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "transformers"


def _embedding_params(model: onnx.ModelProto) -> int:
    tables = {n.input[0] for n in model.graph.node if n.op_type in ("Gather", "EmbedLayerNormalization")}
    tables |= {n.input[i] for n in model.graph.node if n.op_type == "EmbedLayerNormalization" for i in (2, 3, 4)}
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.name in tables)


def _feeds(model: onnx.ModelProto, samples: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in model.graph.input:
        shape = info.type.tensor_type.shape.dim
        dims = [d.dim_value if d.HasField("dim_value") else (samples if i == 0 else 5) for i, d in enumerate(shape)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        if info.name == "input_ids":
            feeds[info.name] = rng.integers(0, 96, dims).astype(dtype)
        elif "mask" in info.name:
            feeds[info.name] = np.ones(dims, dtype=dtype)
        else:
            feeds[info.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def _describe(name: str, model: onnx.ModelProto) -> str:
    from onnxprune.pipeline import inspect_model

    a, _ = inspect_model(str(DATA / f"{name}.onnx"))
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    body = total - _embedding_params(model)
    prunable = sum(g.params for g in a.prunable_groups())
    ffn = sum(1 for g in a.prunable_groups() if g.unit == "channel" and g.size == 64)
    heads = sum(1 for g in a.prunable_groups() if "head of" in g.unit)
    return f"{name:24} {body:>8,} {100 * prunable / body:>8.1f}% {ffn:>4} {heads:>5}"


# ---- a real pretrained transformer: the PP-OCRv4 recognizer of the rapidocr_onnxruntime wheel ----------
WHEEL = "rapidocr_onnxruntime==1.4.4"
RECOGNIZER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
TEXT = Path("/usr/share/common-licenses/GPL-3")
FONTS = [f"/usr/share/fonts/truetype/dejavu/DejaVu{f}.ttf" for f in ("Sans", "Serif", "SansMono", "Sans-Bold")]
HEIGHT, WIDTH = 48, 320  # the recognizer's input as the wheel's config gives it (rec_img_shape)
REAL_METHODS = {
    "magnitude": ("magnitude", {}),
    "wanda --structured": ("wanda", {"structured": True}),
    "obs": ("obs", {}),
    "obs --sequential": ("obs", {"sequential": True}),
}


def fetch_recognizer(cache: Path) -> Path:
    """The recognizer's .onnx, from the wheel `pip download` puts in `cache` (once)."""
    target = cache / Path(RECOGNIZER).name
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", str(cache)]
        subprocess.run(pip, check=True)
        wheel = next(cache.glob("rapidocr_onnxruntime-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            target.write_bytes(archive.read(RECOGNIZER))
    return target


def phrases(count: int, skip: int = 0) -> list[str]:
    """Runs of 2-3 words of real English text, at most 22 characters (they fit 320 pixels)."""
    words = [w for w in TEXT.read_text().split() if w.isascii()]
    out, i = [], 0
    while len(out) < skip + count and i < len(words) - 3:
        take = 3 if len(" ".join(words[i : i + 3])) <= 22 else 2
        out.append(" ".join(words[i : i + take])[:22])
        i += take
    return out[skip : skip + count]


def render(texts: list[str]) -> np.ndarray:
    """Each text in black on white, resized to 48 pixels high and normalized as the wheel does
    ((x / 255 - 0.5) / 0.5, right-padded with 0 to 320 wide): [n, 3, 48, 320] float32."""
    from PIL import Image, ImageDraw, ImageFont

    batch = np.zeros((len(texts), 3, HEIGHT, WIDTH), dtype=np.float32)
    for k, text in enumerate(texts):
        font = ImageFont.truetype(FONTS[k % len(FONTS)], 28) if Path(FONTS[k % len(FONTS)]).exists() else None
        font = font or ImageFont.load_default(28)
        left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
        image = Image.new("RGB", (right - left + 16, bottom - top + 16), "white")
        ImageDraw.Draw(image).text((8 - left, 8 - top), text, fill="black", font=font)
        width = min(WIDTH, int(np.ceil(HEIGHT * image.width / image.height)))
        pixels = np.asarray(image.resize((width, HEIGHT), Image.BILINEAR), dtype=np.float32)
        batch[k, :, :, :width] = (pixels.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return batch


def characters(model: onnx.ModelProto) -> list[str]:
    """The wheel's CTC alphabet: blank, the model's `character` metadata lines, then a space."""
    meta = {p.key: p.value for p in model.metadata_props}
    return ["", *meta["character"].splitlines(), " "]


def decode(probabilities: np.ndarray, alphabet: list[str]) -> list[str]:
    """Greedy CTC: the best class per step, repeats merged, blanks (class 0) dropped."""
    best = probabilities.argmax(-1)
    texts = []
    for row in best:
        keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != 0)
        texts.append("".join(alphabet[c] for c in row[keep]))
    return texts


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def read_back(model: onnx.ModelProto, images: np.ndarray, truth: list[str], alphabet) -> tuple[float, float]:
    """(share of phrases read exactly, character accuracy) of `model` on `images`."""
    from onnxprune import runtime

    session = runtime.session(model, providers=["CPUExecutionProvider"])
    batches = [runtime.run(session, {"x": images[i : i + 32]})[0] for i in range(0, len(images), 32)]
    probabilities = np.concatenate(batches)
    texts = decode(probabilities, alphabet)
    exact = float(np.mean([t == r for t, r in zip(texts, truth, strict=True)]))
    errors = sum(_edit_distance(t, r) for t, r in zip(texts, truth, strict=True))
    return exact, 1.0 - errors / sum(len(r) for r in truth)


def _fused(path: Path, tmp: Path) -> Path | None:
    """The model after onnxruntime's transformer optimizer (as BERT-like: 8 heads of 120), or None."""
    try:
        from onnxruntime.transformers import optimizer
    except ImportError:
        return None
    optimized = optimizer.optimize_model(str(path), model_type="bert", num_heads=8, hidden_size=120, opt_level=0)
    optimized.save_model_to_file(str(tmp / "fused.onnx"))
    fused = onnx.load(str(tmp / "fused.onnx"))
    fused.ir_version = onnx.load(str(path), load_external_data=False).ir_version
    onnx.save(fused, str(tmp / "fused.onnx"))
    return tmp / "fused.onnx"


def real(args) -> None:
    from onnxprune.pipeline import inspect_model

    path = fetch_recognizer(Path(args.cache).expanduser())
    alphabet = characters(onnx.load(str(path)))
    calib_text, check_text = phrases(args.calib), phrases(args.check, skip=args.calib)
    calib_images, check_images = render(calib_text), render(check_text)
    with tempfile.TemporaryDirectory() as tmp:
        forms = {"raw": path, "fused": _fused(path, Path(tmp))}
        np.savez(Path(tmp) / "calib.npz", x=calib_images)
        np.savez(Path(tmp) / "check.npz", x=check_images)
        print(f"PP-OCRv4 recognizer ({WHEEL}): {len(check_text)} rendered phrases read, {len(calib_text)} calibrate")
        for form, variant in forms.items():
            if variant is None:
                continue
            try:
                analysis, totals = inspect_model(variant)
            except OnnxPruneError as exc:  # the optimizer's LayerNormalization in an opset-12 model
                print(f"\n[{form}] refused: {exc}")
                continue
            include = [g for g in analysis.prunable_groups() if any(re.search("MatMul", p.node) for p in g.producers)]
            heads = [g for g in include if "head" in g.unit]
            exact, chars = read_back(onnx.load(str(variant)), check_images, check_text, alphabet)
            fused_ops = sorted({n.op_type for n in onnx.load(str(variant)).graph.node if n.domain == "com.microsoft"})
            print(
                f"\n[{form}{' ' + ','.join(fused_ops) if fused_ops else ''}] params {totals['params']:,}, prunable "
                f"{100 * totals['prunable_params_share']:.1f}%; transformer groups {len(include)} "
                f"({len(heads)} of heads: {', '.join(f'{g.size} x {g.unit}' for g in heads)}), "
                f"{sum(g.params for g in include):,} params; original: exact {exact:.3f}, chars {chars:.4f}"
            )
            print(f"{'method':20} {'ratio':>5} {'params':>9} {'exact':>6} {'chars':>7} {'cosine':>7} {'seconds':>7}")
            for label, (method, extra) in REAL_METHODS.items():
                for ratio in args.ratios:
                    start = time.perf_counter()
                    options = PruneOptions(ratio=ratio, include="MatMul", extra=extra)
                    calib, check = str(Path(tmp) / "calib.npz"), str(Path(tmp) / "check.npz")
                    result = prune(str(variant), method=method, options=options, calibration=calib,
                                   validation_data=check, providers="cpu")  # fmt: skip
                    seconds = time.perf_counter() - start
                    exact, chars = read_back(result.model, check_images, check_text, alphabet)
                    cosine = min(o["cosine"] for o in result.report["validation"]["outputs"].values())
                    removed = result.report["params_before"] - result.report["params_after"]
                    cells = f"{-removed:>9,} {exact:>6.3f} {chars:>7.4f} {cosine:>7.4f} {seconds:>7.1f}"
                    print(f"{label:20} {ratio:>5.0%} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--methods", nargs="+", default=["magnitude", "obs"])
    parser.add_argument("--real", action="store_true", help="benchmark the pretrained PP-OCRv4 recognizer instead")
    parser.add_argument("--cache", default="~/.cache/onnxprune-bench", help="where --real keeps the downloaded wheel")
    parser.add_argument("--calib", type=int, default=64, help="--real: rendered phrases that calibrate")
    parser.add_argument("--check", type=int, default=128, help="--real: other rendered phrases read back")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.real:
        return real(args)
    names = sorted(p.stem for p in DATA.glob("*.onnx"))
    print(f"{'model':24} {'params*':>8} {'prunable':>9} {'ffn':>4} {'heads':>5}   (*: without embeddings)")
    for name in names:
        print(_describe(name, onnx.load(str(DATA / f"{name}.onnx"))))
    print()
    columns = [f"{m} {r:.0%}" for m in args.methods for r in args.ratios]
    print(f"{'model':24} " + " ".join(f"{c:>14}" for c in columns) + "  (output cosine; seconds)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model = onnx.load(str(DATA / f"{name}.onnx"))
            batch = model.graph.input[0].type.tensor_type.shape.dim[0]
            samples = 1 if batch.HasField("dim_value") else 64  # KV-cache models have a static batch
            calib, check = Path(tmp) / "calib.npz", Path(tmp) / "check.npz"
            np.savez(calib, **_feeds(model, samples, 1))
            np.savez(check, **_feeds(model, samples, 2))
            cells = []
            for method in args.methods:
                for ratio in args.ratios:
                    start = time.perf_counter()
                    result = prune(str(DATA / f"{name}.onnx"), method=method, options=PruneOptions(ratio=ratio),
                                   calibration=str(calib),
                                   validation_data=str(check), providers="cpu")  # fmt: skip
                    cosine = min(o["cosine"] for o in result.report["validation"]["outputs"].values())
                    cells.append(f"{cosine:.4f} {time.perf_counter() - start:4.1f}s")
            print(f"{name:24} " + " ".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
