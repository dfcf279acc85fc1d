"""onnxruntime sessions, created deliberately: chosen providers, quiet logs, optional no-optimization."""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import onnxruntime as ort

from .errors import OptionError, ValidationError
from .io import TWO_GB

log = logging.getLogger(__name__)

PROVIDER_CHOICES = ("auto", "cpu", "cuda")


def _cuda_works() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    ort.set_default_logger_severity(4)  # the probe's failure is expected and must stay silent
    try:
        model = onnx.helper.make_model(
            onnx.helper.make_graph(
                [onnx.helper.make_node("Relu", ["x"], ["y"])],
                "probe",
                [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
            ),
            opset_imports=[onnx.helper.make_opsetid("", 13)],
            ir_version=8,
        )
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
        return "CUDAExecutionProvider" in session.get_providers()
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(3)


_CUDA: list[bool] = []


def resolve_providers(choice: str = "auto") -> list[str]:
    """Execution providers for `choice`: auto picks CUDA only when a session really runs on it."""
    if choice not in PROVIDER_CHOICES:
        raise OptionError(f"--providers {choice}: unknown; use one of {', '.join(PROVIDER_CHOICES)}")
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if not _CUDA:
        _CUDA.append(_cuda_works())
    if _CUDA[0]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if choice == "cuda":
        raise OptionError(
            "--providers cuda: CUDA is not usable here (onnxruntime-gpu with CUDA libraries needed); "
            "use --providers cpu"
        )
    return ["CPUExecutionProvider"]


def session(
    model: onnx.ModelProto | str,
    providers: list[str] | None = None,
    optimize: bool = False,
    threads: int = 0,
    spin: bool = True,
) -> ort.InferenceSession:
    """An InferenceSession with logs at error level; graph optimizations off unless `optimize`.
    `spin=False`: onnxruntime's idle threads sleep at once instead of spinning after a run, which
    keeps them off the cores when NumPy works between runs (the calibration collector)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, str) else _serialize(model)
    try:
        return ort.InferenceSession(source, options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        where = source if isinstance(source, str) else "model"
        reason = explain(exc)
        raise ValidationError(
            f"{where}: onnxruntime {ort.__version__} cannot load it: {_node_of(model, reason)}{reason}; the model "
            "must run in onnxruntime to be pruned and validated"
        ) from None


#: pieces of onnxruntime's messages that say nothing to a user: status prefixes, the source file and
#: the C++ signature of the function that failed, the path of the model it was loading.
_NOISE = (
    re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : "),
    re.compile(r"Load model from .*? failed:\s*"),
    re.compile(r"/\S+\.(?:cc|cpp|h):\d+ (?:[\w:~<>,&* ]+\([^()]*\)(?: const)?\s*)?"),
    re.compile(r"\s*This is an invalid model\.\s*"),
)
_NODE = re.compile(r"(?:Non-zero status code returned while running|In Node,) \(?\s*(\w+) node\. Name:'([^']*)'")
_STATUS = re.compile(r"Status Message: (.*)", re.S)


def explain(exc: BaseException, limit: int = 220) -> str:
    """onnxruntime's reason for `exc`, without status codes, source paths and C++ signatures, naming
    the node when onnxruntime says which one failed; cut to one line of at most `limit` characters."""
    text = str(exc).strip() or type(exc).__name__
    node = _NODE.search(text)
    status = _STATUS.search(text)
    if node and status:
        text = f"node '{node.group(2)}' ({node.group(1)}): {status.group(1)}"
    for pattern in _NOISE:
        text = pattern.sub(" ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


_OP = re.compile(r"(?:([\w.]+):)?(\w+)\(-?\d+\)")


def _node_of(model: onnx.ModelProto | str, reason: str) -> str:
    """'node NAME: ' for the first node of the op type onnxruntime's reason names (it names the op only)."""
    match = _OP.search(reason)
    if not match:
        return ""
    try:
        proto = onnx.load(model, load_external_data=False) if isinstance(model, str) else model
    except Exception:  # noqa: BLE001 - the reason alone is still the answer
        return ""
    domain, op = match.group(1) or "", match.group(2)
    for node in proto.graph.node:
        if node.op_type == op and (node.domain or "") in (domain, "ai.onnx" if not domain else domain):
            return f"node '{node.name or node.output[0]}': "
    return ""


def explain_failure(exc: BaseException) -> str | None:
    """explain(exc) when `exc` is an onnxruntime error (raised while running a model), else None."""
    module = type(exc).__module__ or ""
    if module.startswith("onnxruntime"):
        return explain(exc)
    return None


def _serialize(model: onnx.ModelProto) -> bytes:
    if model.ByteSize() >= TWO_GB:
        raise ValidationError("model above 2 GB: validate it from its saved file")
    return model.SerializeToString()


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs: list[str] | None = None):
    names = [i.name for i in sess.get_inputs()]
    try:
        return sess.run(outputs, {k: v for k, v in feeds.items() if k in names}, _QUIET_RUN)
    except Exception as exc:
        if explain_failure(exc) is None:
            raise
        shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in feeds.items() if k in names)
        raise ValidationError(f"onnxruntime cannot run the model on inputs {shapes}: {explain(exc)}") from None


_QUIET_RUN = ort.RunOptions()
_QUIET_RUN.log_severity_level = 4  # a failed run raises, and the error says it once (no colored log line)


def fixed_batch(sess: ort.InferenceSession) -> int | None:
    """The batch size the session's inputs fix on their first axis, or None when it is free."""
    sizes = {i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
    return sizes.pop() if len(sizes) == 1 else None
