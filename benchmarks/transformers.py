"""Transformers, raw and fused: what prunes, and what pruning costs in output cosine.

    python benchmarks/transformers.py [--ratios 0.3 0.5] [--methods magnitude obs]

Runs on the tiny random-initialized models of tests/data/transformers (BERT, ViT, GPT-2, a Llama-style
decoder with 2 KV heads for 4 query heads, with and without KV cache; each raw torch export and after
onnxruntime's transformer optimizer). Prints per model: the share of the non-embedding parameters
that sits in prunable groups, the FFN-neuron and head groups, and per method and ratio the output
cosine to the original on 64 generated inputs (token ids 0..95 or normal pixels), calibrating on 64
others. The weights are random, so the cosines show that pruning runs end to end on these graphs,
not what a trained model would keep: no pretrained transformer is benchmarked here.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from onnxprune import PruneOptions, prune
from onnxprune.analysis import analyze
from onnxprune.graph import GraphIndex

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
    a = analyze(GraphIndex.build(model))
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    body = total - _embedding_params(model)
    prunable = sum(g.params for g in a.prunable_groups())
    ffn = sum(1 for g in a.prunable_groups() if g.unit == "channel" and g.size == 64)
    heads = sum(1 for g in a.prunable_groups() if g.unit.startswith("head") or g.unit.startswith("KV head"))
    return f"{name:24} {body:>8,} {100 * prunable / body:>8.1f}% {ffn:>4} {heads:>5}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--methods", nargs="+", default=["magnitude", "obs"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
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
                    result = prune(model, method=method, options=PruneOptions(ratio=ratio), calibration=str(calib),
                                   validation_data=str(check), providers="cpu")  # fmt: skip
                    cosine = min(o["cosine"] for o in result.report["validation"]["outputs"].values())
                    cells.append(f"{cosine:.4f} {time.perf_counter() - start:4.1f}s")
            print(f"{name:24} " + " ".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
