#!/usr/bin/env python
"""Build the sample ONNX models and data sets used by onnxprune's tests.

This script is the ONLY part of the project that needs torch (and scikit-learn
for the digits data set).  The project itself only consumes the generated
files.  Run from anywhere:

    pip install torch scikit-learn onnx onnxruntime
    python models/build_models.py

Everything is seeded; running the script again regenerates the same files
(the .npz archives are written with fixed zip timestamps so that they are
byte-identical, the .onnx files are byte-identical for a given torch version).

Outputs (all in the directory of this script):
  digits_{train,calib,test}.npz   digits data (keys: pixels, image, labels)
  mlp.onnx, lenet5.onnx, resnet_digits.onnx     trained on digits
  vgg_bn.onnx ... constant_weights.onnx          random-init topology models
  accuracy.json, topologies.json, README.md
"""

import io
import json
import os
import random
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 17
IR_VERSION = 8
SEED = 0


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def save_npz(path, **arrays):
    """np.savez_compressed equivalent with fixed zip timestamps (reproducible bytes)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def build_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)  # [1797, 64] in [0, 1]
    y = d.target.astype(np.int64)
    perm = np.random.RandomState(SEED).permutation(len(x))
    tr, te = perm[:1000], perm[1000:]
    splits = {
        "train": (x[tr], y[tr]),
        "calib": (x[tr][:500], y[tr][:500]),
        "test": (x[te], y[te]),
    }
    for name, (px, lb) in splits.items():
        save_npz(os.path.join(HERE, f"digits_{name}.npz"), pixels=px, image=px.reshape(-1, 1, 8, 8), labels=lb)
    return splits


# ---------------------------------------------------------------------------
# Export helpers
# ---------------------------------------------------------------------------


def _inline_identity_initializers(model):
    """The TorchScript exporter de-duplicates initializers with identical values
    and re-creates the duplicates with Identity nodes.  Replace such Identity
    nodes by a real copy of the initializer so the graph is clean."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    keep = []
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            g.initializer.append(t)
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)


def _set_output_shapes(model, out_shapes):
    for o, shape in zip(model.graph.output, out_shapes, strict=True):
        dims = o.type.tensor_type.shape.dim
        del dims[:]
        for i, s in enumerate(shape):
            d = dims.add()
            if i == 0:
                d.dim_param = "N"
            else:
                d.dim_value = int(s)


def export(module, example_inputs, input_names, output_names):
    """Export with the legacy (TorchScript) exporter, keep BatchNormalization
    nodes (TrainingMode.PRESERVE on an eval() module: no Conv+BN fusion),
    dynamic batch axis 'N' on every input and output."""
    module.eval()
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    dyn = {n: {0: "N"} for n in list(input_names) + list(output_names)}
    buf = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example_inputs,
            buf,
            dynamo=False,
            opset_version=OPSET,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dyn,
        )
    model = onnx.load_from_string(buf.getvalue())
    _inline_identity_initializers(model)
    with torch.no_grad():
        outs = module(*example_inputs)
    if not isinstance(outs, (tuple, list)):
        outs = (outs,)
    _set_output_shapes(model, [o.shape for o in outs])
    model.ir_version = IR_VERSION
    model.producer_name = "onnxprune-build_models"
    model.producer_version = "1"
    return model


def constants_instead_of_initializers(model):
    """Move every initializer into a Constant node at the start of the graph
    (the way Paddle exports weights)."""
    g = model.graph
    consts = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in g.initializer]
    init_names = {t.name for t in g.initializer}
    nodes = consts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    inputs = [i for i in g.input if i.name not in init_names]
    del g.input[:]
    g.input.extend(inputs)
    return model


def save_and_verify(model, filename, module=None, example_inputs=None, required_ops=()):
    path = os.path.join(HERE, filename)
    assert model.ir_version <= 10
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    missing = set(required_ops) - ops
    assert not missing, f"{filename}: missing op types {missing}; has {sorted(ops)}"
    onnx.save(model, path)
    # reload from disk, check again, run in onnxruntime on a batch of 2
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    if module is not None:
        if not isinstance(example_inputs, tuple):
            example_inputs = (example_inputs,)
        g = torch.Generator().manual_seed(123)
        feeds_t = tuple(torch.rand((2,) + tuple(x.shape[1:]), generator=g) for x in example_inputs)
        feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), feeds_t, strict=True)}
        got = sess.run(None, feeds)
        with torch.no_grad():
            ref = module(*feeds_t)
        if not isinstance(ref, (tuple, list)):
            ref = (ref,)
        for a, b in zip(got, ref, strict=True):
            assert a.shape[0] == 2
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-3, atol=1e-4)
    return sess


def n_params(model):
    """Number of float weights stored in the ONNX model (initializers + Constant
    nodes with float tensors of size > 1)."""
    tot = 0
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            tot += int(np.prod(t.dims))
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT and int(np.prod(a.t.dims)) > 1:
                    tot += int(np.prod(a.t.dims))
    return tot


def randomize_bn(module, gen):
    """Give BatchNorm / LayerNorm / PReLU layers non-trivial parameters and running
    statistics (random-init models would otherwise have gamma=1, beta=0, mean=0, var=1)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            elif isinstance(m, nn.LayerNorm):
                c = m.normalized_shape
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.3)


# ---------------------------------------------------------------------------
# Trained digits models
# ---------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 2 * 2, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + sc)


class ResNetDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def train(module, x_train, y_train, epochs, lr, batch_size=32, weight_decay=0.0):
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    x = torch.from_numpy(x_train)
    y = torch.from_numpy(y_train)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        module.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(module(x[idx]), y[idx])
            loss.backward()
            opt.step()
        sched.step()
    module.eval()
    return module


def onnx_accuracy(sess, x, y):
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean())


# ---------------------------------------------------------------------------
# Topology models (random init)
# ---------------------------------------------------------------------------


def conv_bn(cin, cout, k=3, s=1, bias=False, groups=1):
    return [nn.Conv2d(cin, cout, k, s, k // 2, bias=bias, groups=groups), nn.BatchNorm2d(cout)]


class VGGBN(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for cin, cout in [(3, 8), (8, 16), (16, 32)]:
            layers += conv_bn(cin, cout, bias=True) + [nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)
        return self.fc2(F.relu(self.fc1(x)))


class ResNetBasic(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 16), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, stride=2), BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        sc = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + sc)


class ResNetBottleneck(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 32), nn.ReLU())
        self.blocks = nn.Sequential(Bottleneck(32, 8, 32), Bottleneck(32, 16, 64, stride=2), Bottleneck(64, 16, 64))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            *conv_bn(cin, hid, k=1),
            nn.ReLU6(),
            *conv_bn(hid, hid, k=3, s=stride, groups=hid),
            nn.ReLU6(),
            *conv_bn(hid, cout, k=1),
        )

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 16), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 3),  # residual
            InvertedResidual(16, 24, 2, 3),  # stride 2, no residual
            InvertedResidual(24, 24, 1, 2),  # residual
        )
        self.head = nn.Sequential(*conv_bn(24, 32, k=1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class SE(nn.Module):
    def __init__(self, c, r=4, hard=False):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, c // r, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(c // r, c, 1)
        self.gate = nn.Hardsigmoid() if hard else nn.Sigmoid()

    def forward(self, x):
        s = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * s


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(*conv_bn(3, 16), nn.ReLU())
        self.conv2 = nn.Sequential(*conv_bn(16, 32), nn.ReLU())
        self.se1 = SE(32, 4, hard=False)  # Sigmoid gate
        self.conv3 = nn.Sequential(*conv_bn(32, 32, s=2), nn.Hardswish())
        self.se2 = SE(32, 4, hard=True)  # HardSigmoid gate
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.se1(self.conv2(self.conv1(x)))
        x = self.se2(self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class DenseNet(nn.Module):
    def __init__(self, growth=8, n_layers=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.dense = nn.ModuleList()
        c = 16
        for _ in range(n_layers):
            self.dense.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, 1, 1, bias=False)))
            c += growth
        self.transition = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)
        )
        c //= 2
        self.norm = nn.BatchNorm2d(c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.dense:
            x = torch.cat([x, layer(x)], 1)
        x = self.transition(x)
        x = F.relu(self.norm(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class YConv(nn.Module):
    """YOLOv8 Conv: Conv2d + BN + SiLU."""

    def __init__(self, cin, cout, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class YBottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1 = YConv(c, c, 3)
        self.cv2 = YConv(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, cin, cout, n=2):
        super().__init__()
        self.c = cout // 2
        self.cv1 = YConv(cin, 2 * self.c, 1)
        self.m = nn.ModuleList(YBottleneck(self.c) for _ in range(n))
        self.cv2 = YConv((2 + n) * self.c, cout, 1)

    def forward(self, x):
        y = list(torch.split(self.cv1(x), [self.c, self.c], 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class C2fNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = YConv(3, 16, 3)
        self.c2f = C2f(16, 32, n=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.c2f(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class ChannelShuffleNet(nn.Module):
    def __init__(self, groups=4):
        super().__init__()
        self.g = groups
        self.stem = nn.Sequential(*conv_bn(3, 16), nn.ReLU())
        self.gconv1 = nn.Sequential(*conv_bn(16, 16, k=1, groups=groups), nn.ReLU())
        self.gconv2 = nn.Sequential(*conv_bn(16, 32, k=1, groups=groups), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.gconv1(self.stem(x))
        c, h, w = 16, 16, 16  # python ints: constant shapes
        x = x.reshape(-1, self.g, c // self.g, h, w)  # Reshape [N,g,C/g,H,W]
        x = x.transpose(1, 2).contiguous()  # Transpose(0,2,1,3,4)
        x = x.reshape(-1, c, h, w)  # Reshape [N,C,H,W]
        x = self.gconv2(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv1d(4, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv1d(16, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32), nn.PReLU(num_parameters=32))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class EncoderBlock(nn.Module):
    """Post-LN transformer encoder block with explicit multi-head attention."""

    def __init__(self, d=32, heads=4, ff=64, tokens=8):
        super().__init__()
        self.d, self.h, self.t = d, heads, tokens
        self.dh = d // heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, ff)
        self.act = nn.GELU()  # exact (erf)
        self.ff2 = nn.Linear(ff, d)
        self.ln2 = nn.LayerNorm(d)

    def heads(self, x):
        return x.reshape(-1, self.t, self.h, self.dh).transpose(1, 2)  # [N,h,T,dh]

    def forward(self, x):
        q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
        att = torch.matmul(q, k.transpose(2, 3)) / (self.dh**0.5)
        att = torch.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(-1, self.t, self.d)
        x = self.ln1(x + self.o(y))
        x = self.ln2(x + self.ff2(self.act(self.ff1(x))))
        return x


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# (filename, class, input name, input shape w/o batch, output name, description, required op types)
TOPOLOGIES = [
    (
        "vgg_bn.onnx",
        VGGBN,
        "image",
        (3, 16, 16),
        "out",
        "VGG-style: 3x (Conv-BatchNormalization-Relu-MaxPool), Flatten, Gemm-Relu-Gemm",
        {"Conv", "BatchNormalization", "Relu", "MaxPool", "Flatten", "Gemm"},
    ),
    (
        "resnet_basic.onnx",
        ResNetBasic,
        "image",
        (3, 16, 16),
        "out",
        "ResNet basic blocks: identity residual Add, a stride-2 block with 1x1 Conv+BN projection shortcut, "
        "GlobalAveragePool-Flatten-Gemm",
        {"Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool", "Flatten", "Gemm"},
    ),
    (
        "resnet_bottleneck.onnx",
        ResNetBottleneck,
        "image",
        (3, 16, 16),
        "out",
        "ResNet bottleneck blocks (1x1 reduce, 3x3, 1x1 expand, BN, residual Add), one stride-2 block "
        "with 1x1 projection shortcut",
        {"Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool", "Flatten", "Gemm"},
    ),
    (
        "mobilenetv2.onnx",
        MobileNetV2,
        "image",
        (3, 16, 16),
        "out",
        "MobileNetV2 inverted residuals: 1x1 expand+BN+ReLU6(Clip), depthwise 3x3 (group=channels)+BN+ReLU6, "
        "1x1 project+BN, residual Add when shapes match; one stride-2 block without residual",
        {"Conv", "BatchNormalization", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"},
    ),
    (
        "se_block.onnx",
        SENet,
        "image",
        (3, 16, 16),
        "out",
        "Conv trunk with squeeze-excitation: GlobalAveragePool-Conv1x1-Relu-Conv1x1-Sigmoid-Mul; second SE with "
        "HardSigmoid gate after a HardSwish conv",
        {
            "Conv",
            "BatchNormalization",
            "Relu",
            "GlobalAveragePool",
            "Sigmoid",
            "Mul",
            "HardSigmoid",
            "HardSwish",
            "Flatten",
            "Gemm",
        },
    ),
    (
        "densenet_concat.onnx",
        DenseNet,
        "image",
        (3, 16, 16),
        "out",
        "DenseNet block: 3 layers of BN-Relu-Conv3x3 each Concat with its input on channels; transition "
        "BN-Relu-Conv1x1-AveragePool; BN-Relu-GlobalAveragePool-Flatten-Gemm",
        {"Conv", "BatchNormalization", "Relu", "Concat", "AveragePool", "GlobalAveragePool", "Flatten", "Gemm"},
    ),
    (
        "c2f_split.onnx",
        C2fNet,
        "image",
        (3, 16, 16),
        "out",
        "YOLOv8 C2f: Conv1x1-BN-SiLU, Split into 2 channel halves, 2 residual bottlenecks on the second half, "
        "Concat of all pieces, Conv1x1; SiLU = x*Sigmoid(x)",
        {"Conv", "BatchNormalization", "Sigmoid", "Mul", "Split", "Add", "Concat", "GlobalAveragePool", "Gemm"},
    ),
    (
        "channel_shuffle.onnx",
        ChannelShuffleNet,
        "image",
        (3, 16, 16),
        "out",
        "ShuffleNet-style: Conv, grouped 1x1 Conv (g=4), channel shuffle Reshape[N,4,4,16,16]-Transpose(0,2,1,3,4)-"
        "Reshape[N,16,16,16], grouped 1x1 Conv",
        {"Conv", "BatchNormalization", "Relu", "Reshape", "Transpose", "GlobalAveragePool", "Gemm"},
    ),
    (
        "conv1d.onnx",
        Conv1dNet,
        "signal",
        (4, 32),
        "out",
        "1-D conv net: 2x (Conv1d-BN-Relu), Conv1d-BN-PRelu (per-channel slope), GlobalAveragePool, Flatten, Gemm",
        {"Conv", "BatchNormalization", "Relu", "PRelu", "GlobalAveragePool", "Flatten", "Gemm"},
    ),
    (
        "transformer_encoder.onnx",
        EncoderBlock,
        "tokens",
        (8, 32),
        "out",
        "Post-LN transformer encoder block: explicit 4-head self-attention (MatMul/Add q,k,v, Reshape, Transpose, "
        "MatMul, Softmax, MatMul, out proj), residual Add, LayerNormalization, FFN 32-64-32 with exact GELU (Erf)",
        {"MatMul", "Add", "Reshape", "Transpose", "Softmax", "LayerNormalization", "Erf"},
    ),
    (
        "constant_weights.onnx",
        SmallCNN,
        "image",
        (3, 16, 16),
        "out",
        "Small CNN Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm with all weights stored as Constant nodes "
        "(no initializers), like Paddle exports",
        {"Constant", "Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"},
    ),
]


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    seed_all(SEED)

    results = {}  # filename -> dict(desc, params, acc)
    topologies = {}

    # ---- data ----
    splits = build_digits()
    xtr, ytr = splits["train"]
    xte, yte = splits["test"]

    # ---- trained models ----
    trained = [
        (
            "mlp.onnx",
            MLP,
            "pixels",
            (64,),
            dict(epochs=60, lr=1e-3),
            "LeNet-300-100 MLP: Gemm 300-Relu-Gemm 100-Relu-Gemm 10",
        ),
        (
            "lenet5.onnx",
            LeNet5,
            "image",
            (1, 8, 8),
            dict(epochs=100, lr=2e-3),
            "LeNet-5: Conv(1-6,k3)-Relu-MaxPool-Conv(6-16,k3)-Relu-MaxPool-Flatten-Gemm 120-Relu-Gemm 84-Relu-Gemm 10",
        ),
        (
            "resnet_digits.onnx",
            ResNetDigits,
            "image",
            (1, 8, 8),
            dict(epochs=40, lr=2e-3, weight_decay=1e-4),
            "Small ResNet: stem Conv-BN-Relu, 2 basic blocks @16, stride-2 block @32 with 1x1 Conv+BN shortcut, "
            "GlobalAveragePool-Flatten-Gemm 10",
        ),
    ]
    accuracy = {}
    for i, (fname, cls, in_name, in_shape, hp, desc) in enumerate(trained):
        seed_all(SEED + i)
        net = cls()
        xin = xtr.reshape((-1,) + in_shape)
        train(net, xin, ytr, **hp)
        example = torch.from_numpy(xin[:1])
        model = export(net, example, [in_name], ["logits"])
        sess = save_and_verify(model, fname, net, example)
        acc = onnx_accuracy(sess, xte.reshape((-1,) + in_shape), yte)
        accuracy[fname] = round(acc, 4)
        results[fname] = dict(desc=desc, params=n_params(model), acc=acc)
        topologies[fname] = {
            "inputs": {in_name: ["N", *in_shape]},
            "outputs": {"logits": ["N", 10]},
            "description": desc + " (trained on sklearn digits)",
        }

    # ---- topology models ----
    for i, (fname, cls, in_name, in_shape, out_name, desc, req) in enumerate(TOPOLOGIES):
        seed_all(SEED + 100 + i)
        net = cls()
        randomize_bn(net, torch.Generator().manual_seed(SEED + 200 + i))
        net.eval()
        example = torch.rand((1,) + in_shape)
        model = export(net, example, [in_name], [out_name])
        if fname == "constant_weights.onnx":
            model = constants_instead_of_initializers(model)
            assert len(model.graph.initializer) == 0
        save_and_verify(model, fname, net, example, required_ops=req)
        with torch.no_grad():
            out_shape = list(net(example).shape[1:])
        results[fname] = dict(desc=desc, params=n_params(model), acc=None)
        topologies[fname] = {
            "inputs": {in_name: ["N", *in_shape]},
            "outputs": {out_name: ["N", *out_shape]},
            "description": desc,
        }

    with open(os.path.join(HERE, "accuracy.json"), "w") as f:
        json.dump(accuracy, f, indent=2)
        f.write("\n")
    with open(os.path.join(HERE, "topologies.json"), "w") as f:
        json.dump(topologies, f, indent=2)
        f.write("\n")
    write_readme(results, accuracy)

    # ---- summary ----
    print(f"{'file':28s} {'params':>8s} {'size KB':>8s} {'test acc':>9s}  op types")
    for fname, r in results.items():
        m = onnx.load(os.path.join(HERE, fname))
        ops = sorted({n.op_type for n in m.graph.node})
        size = os.path.getsize(os.path.join(HERE, fname)) / 1024
        acc = f"{r['acc']:.4f}" if r["acc"] is not None else "-"
        print(f"{fname:28s} {r['params']:8d} {size:8.1f} {acc:>9s}  {','.join(ops)}")
    bad = {k: v for k, v in accuracy.items() if v < 0.9}
    if bad:
        print("ERROR: accuracy below 0.9:", bad)
        sys.exit(1)


def write_readme(results, accuracy):
    lines = [
        "# Sample models for onnxprune",
        "",
        "Generated by `python models/build_models.py` (needs torch + scikit-learn; the",
        "project itself does not). Seeded and reproducible. All models: opset "
        f"{OPSET}, IR version {IR_VERSION}, dynamic batch dimension `N` on every input and output,",
        "pass `onnx.checker.check_model(full_check=True)` and run in onnxruntime (CPU).",
        "",
        "## Data",
        "",
        "sklearn `load_digits` (1797 8x8 images), pixels scaled to [0,1] (divided by 16), fixed seeded",
        "split: 1000 train / 797 test; calibration = first 500 train samples.",
        "Each npz holds `pixels` float32 [n,64], `image` float32 [n,1,8,8], `labels` int64 [n].",
        "",
        "| file | samples |",
        "|---|---|",
        "| digits_train.npz | 1000 |",
        "| digits_calib.npz | 500 (first 500 of train) |",
        "| digits_test.npz | 797 |",
        "",
        "## Trained models (output `logits` [N,10])",
        "",
        "| file | what it is | params | test accuracy |",
        "|---|---|---|---|",
    ]
    for fname, r in results.items():
        if r["acc"] is not None:
            lines.append(f"| {fname} | {r['desc']} | {r['params']} | {accuracy[fname]:.4f} |")
    lines += [
        "",
        "## Topology models (random init, BN statistics randomized; output `out`)",
        "",
        "Input and output shapes are in `topologies.json`.",
        "",
        "| file | what it is | params |",
        "|---|---|---|",
    ]
    for fname, r in results.items():
        if r["acc"] is None:
            lines.append(f"| {fname} | {r['desc']} | {r['params']} |")
    lines += [
        "",
        "`params` counts every float weight stored in the model (initializers or Constant tensors),",
        "including BatchNormalization running mean/variance.",
        "",
        "`accuracy.json` maps trained model file -> test accuracy (onnxruntime, digits_test.npz).",
        "",
    ]
    with open(os.path.join(HERE, "README.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
