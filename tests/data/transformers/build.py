"""Rebuild the tiny transformer models under tests/data/transformers (no download: random weights
from `transformers` configs), each exported by torch's TorchScript exporter and by its dynamo exporter
(`*_dynamo.onnx`), and each export passed through onnxruntime's transformer optimizer (`*_fused.onnx`).

    pip install torch==2.13.0 transformers   # for this script only; the tests need neither
    pip install --no-deps onnxscript onnx-ir   # the dynamo exporter's (keeps the installed onnx)
    python tests/data/transformers/build.py

Sizes are tiny (hidden 32, 4 heads of 8, 2 layers, vocabulary 96) so each file stays far below 1 MB.
Models with a KV cache (`*_cache`) have static sizes (batch 2, 5 new tokens, 3 past), so that a
generated feed has consistent past, sequence and mask lengths; the others have symbolic batch and
sequence.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import onnx
import torch
import transformers

HERE = Path(__file__).resolve().parent
B, T, PAST = 2, 5, 3
COMMON = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2)


def _configs():
    return {
        "bert": transformers.BertConfig(vocab_size=96, max_position_embeddings=64, **COMMON),
        "vit": transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, **COMMON),
        "gpt2": transformers.GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_head=4, n_layer=2, n_inner=64),
        "llama": transformers.LlamaConfig(
            vocab_size=96, max_position_embeddings=64, num_key_value_heads=2, head_dim=8, **COMMON
        ),  # fmt: skip
    }


class _Logits(torch.nn.Module):
    """The model's first output as one tensor (with the KV cache flattened to outputs when `cache`)."""

    def __init__(self, model, cache: bool, layers: int = 2) -> None:
        super().__init__()
        self.model, self.cache, self.layers = model, cache, layers

    def forward(self, *args):
        if len(args) == 1:
            return self.model(args[0])[0]
        if not self.cache:
            extra = {"use_cache": False} if "use_cache" in _forward_args(self.model) else {}
            return self.model(input_ids=args[0], attention_mask=args[1], **extra)[0]
        ids, mask, *past = args
        cache = transformers.DynamicCache()
        for layer in range(self.layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        present = out.past_key_values
        flat = []
        for layer in range(self.layers):
            flat += [present.layers[layer].keys, present.layers[layer].values]
        return (out.logits, *flat)


def _forward_args(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _export(name: str, config, cache: bool = False, dynamo: bool = False) -> Path:
    torch.manual_seed(0)
    config._attn_implementation = "eager"
    if name == "vit":
        model = transformers.ViTModel(config, add_pooling_layer=False)
        args = (torch.randn(B, 3, 16, 16),)
        inputs, dynamic = ["pixel_values"], {"pixel_values": {0: "batch"}}
    else:
        model = (transformers.BertModel(config, add_pooling_layer=False) if name == "bert"
                 else transformers.AutoModelForCausalLM.from_config(config))  # fmt: skip
        ids = torch.randint(0, 96, (B, T))
        mask = torch.ones(B, T + (PAST if cache else 0), dtype=torch.int64)
        args = (ids, mask)
        inputs = ["input_ids", "attention_mask"]
        dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"}}
    model.eval()
    with torch.no_grad():  # as after training: no zero bias or unit norm scale the exporter could share
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    outputs = ["output"]
    if cache:
        kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
        head = config.hidden_size // config.num_attention_heads
        for layer in range(2):
            for kind in ("key", "value"):
                inputs.append(f"past.{layer}.{kind}")
                outputs.append(f"present.{layer}.{kind}")
                args = (*args, torch.randn(B, kv_heads, PAST, head))
                dynamic[inputs[-1]] = {0: "batch", 2: "past"}
                dynamic[outputs[-1]] = {0: "batch", 2: "total"}
    dynamic["output"] = {0: "batch"} if name == "vit" else {0: "batch", 1: "sequence"}
    if cache:  # static sizes: a generated feed then has consistent past, sequence and mask lengths
        dynamic = {}
    path = HERE / f"{name}{'_cache' if cache else ''}{'_dynamo' if dynamo else ''}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:  # torch.export names its own symbolic dims; the module takes *args: one spec per tensor
            auto = torch.export.Dim.AUTO
            shapes = (tuple({axis: auto for axis in dynamic.get(name, {})} for name in inputs),)
            torch.onnx.export(_Logits(model, cache), args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_shapes=shapes, opset_version=18, dynamo=True, external_data=False)  # fmt: skip
        else:
            torch.onnx.export(_Logits(model, cache), args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=17, dynamo=False)  # fmt: skip
    model_proto = onnx.load(str(path))
    model_proto.ir_version = 8
    onnx.save(model_proto, str(path))
    return path


def _fuse(path: Path, name: str, config) -> Path:
    from onnxruntime.transformers import optimizer

    kind = {"bert": "bert", "vit": "vit", "gpt2": "gpt2", "llama": "bert"}[name]
    optimized = optimizer.optimize_model(str(path), model_type=kind, num_heads=config.num_attention_heads,
                                         hidden_size=config.hidden_size, opt_level=0)  # fmt: skip
    out = path.with_name(path.stem + "_fused.onnx")
    optimized.save_model_to_file(str(out))  # adds the com.microsoft opset import
    model = onnx.load(str(out))
    model.ir_version = 8
    onnx.save(model, str(out))
    return out


def _variants(name: str) -> list[tuple[bool, bool]]:
    """(KV cache, dynamo exporter) pairs: the decoders with and without a cache; each exporter."""
    caches = (False, True) if name in ("gpt2", "llama") else (False,)
    return [(cache, dynamo) for cache in caches for dynamo in (False, True)]


def main(names: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    for name, config in _configs().items():
        if names and name not in names:
            continue
        for cache, dynamo in _variants(name):
            path = _export(name, config, cache, dynamo)
            fused = _fuse(path, name, config)
            ops = sorted({n.op_type for n in onnx.load(str(fused)).graph.node if n.domain == "com.microsoft"})
            print(f"{path.name}: {path.stat().st_size} bytes; {fused.name}: {fused.stat().st_size} bytes, fused {ops}")


if __name__ == "__main__":
    main(sys.argv[1:])
