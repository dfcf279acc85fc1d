"""Rebuild the small recurrent test models in this folder (needs `pip install torch==2.13.0`; the tests
do not). Random weights, seeded; legacy (TorchScript) exporter, opset 17, IR version 8, layout 0 (torch
exports no batch-first LSTM and no reverse-only direction: tests build those with onnx.helper).

  crnn_small.onnx   Conv-Relu-MaxPool -> permute -> view(n, w, c*h) (a run-time C*H reshape: dynamic
                    batch and width) -> bidirectional LSTM (batch_first) -> Linear
  lstm_forward.onnx Linear -> LSTM (forward, 2 layers) -> Linear on the last step, dynamic batch
  gru_state.onnx    Linear -> GRU (bidirectional) from a learned initial state (a constant: batch 2)
  rnn_stack.onnx    RNN (tanh, bidirectional, 2 layers) -> Linear, dynamic batch

Run from the project root: python tests/data/build_recurrent.py
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

HERE = Path(__file__).parent
OPSET, IR_VERSION = 17, 8


class CRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.lstm = nn.LSTM(16, 6, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(12, 7)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        n, c, h, w = x.shape
        x = x.permute(0, 3, 1, 2).reshape(n, w, c * h)
        y, _ = self.lstm(x)
        return self.fc(y)


class LSTMForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(3, 5)
        self.lstm = nn.LSTM(5, 6, num_layers=2)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y, _ = self.lstm(torch.relu(self.pre(x)))
        return self.fc(y[-1])


class GRUState(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(3, 5)
        self.gru = nn.GRU(5, 6, bidirectional=True)
        self.h0 = nn.Parameter(torch.randn(2, 2, 6) * 0.5)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        y, _ = self.gru(self.pre(x), self.h0)
        return self.fc(y)


class RNNStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(3, 5, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y)


def export(module: nn.Module, example: torch.Tensor, dynamic: dict) -> onnx.ModelProto:
    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=dynamic,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = IR_VERSION
    model.producer_name = "onnxprune-build_recurrent"
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    torch.manual_seed(0)
    models = {
        "crnn_small": (CRNN(), torch.randn(2, 1, 8, 12), {"x": {0: "N", 3: "W"}, "y": {0: "N", 1: "T"}}),
        "lstm_forward": (LSTMForward(), torch.randn(5, 2, 3), {"x": {1: "N"}, "y": {0: "N"}}),
        "gru_state": (GRUState(), torch.randn(5, 2, 3), {}),
        "rnn_stack": (RNNStack(), torch.randn(5, 2, 3), {"x": {1: "N"}, "y": {1: "N"}}),
    }
    for name, (module, example, dynamic) in models.items():
        onnx.save(export(module, example, dynamic), HERE / f"{name}.onnx")
        print(f"wrote {name}.onnx")


if __name__ == "__main__":
    main()
