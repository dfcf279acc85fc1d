"""BatchNormalization after an OBS layer: the error in post-BN units, and a bias through the BN's mean.

A layer z = X~ W~^T read only by y = gamma (z - mu) / sqrt(var + eps) + beta (inference mode) has y as
its real output. With s_o = |gamma_o| / sqrt(var_o + eps), the error on y of a weight change is

    E_y = 1/(2n) sum_o s_o^2 ||X~ dw~_o||^2 = 1/(2n) ||X~ dW'^T||^2,     W' = diag(s) W~,

the plain OBS layer error of the rows scaled by s: OBS runs on W' and the result is divided by s again
(per row the OBS solution is scale-equivariant, so only the merge of the rows' removal traces and the
layer's share of a global allocation change). A convolution exported without bias (torch: conv -> BN)
gets a *virtual* bias column: a bias c_o on z equals mu_o - c_o in the BN, so the OBS solves with
x~ = [x; 1] and the bias column goes into the BN's running mean. The bias absorbs the mean shift that
pruning (and, with --sequential, the pruned inputs) causes, as it does after BN folding, without
changing the graph.

Gains s_o below FLOOR x max(s) are raised to it (a channel gamma = 0 makes irrelevant: its weights go
first, and dividing by the floor keeps every value finite).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..graph import GraphIndex, attributes
from ..layers import Layer, following_batchnorm

#: smallest gain kept, as a share of the layer's largest
FLOOR = 1e-6


@dataclass(frozen=True)
class LayerView:
    """How OBS sees one model layer: `layer` (with the BN mean as its bias when it has a virtual one),
    the row gains `scale` (None: 1) and `mean`, the BN running mean that holds the virtual bias."""

    layer: Layer
    model_layer: Layer
    scale: np.ndarray | None = None
    mean: str | None = None

    @property
    def node(self) -> str:
        return self.layer.node


def plain_view(layer: Layer) -> LayerView:
    return LayerView(layer, layer)


def batchnorm_view(index: GraphIndex, layer: Layer) -> LayerView:
    """The view of `layer` through the BatchNormalization that alone reads it (plain when there is none)."""
    bn = _following_batchnorm(index, layer)
    if bn is None:
        return plain_view(layer)
    gamma, var = (np.asarray(index.constant(bn.input[k]), dtype=np.float64).reshape(-1) for k in (1, 4))
    gain = np.abs(gamma) / np.sqrt(var + float(attributes(bn).get("epsilon", 1e-5)))
    if not np.isfinite(gain).all() or not gain.max(initial=0.0) > 0:
        return plain_view(layer)
    gain = np.maximum(gain, FLOOR * gain.max())
    mean = bn.input[3]
    if layer.obs_bias or len(index.consumers.get(mean, [])) != 1:
        return LayerView(layer, layer, gain)
    return LayerView(replace(layer, obs_bias=mean, obs_bias_shape=(layer.outputs,)), layer, gain, mean)


def _following_batchnorm(index: GraphIndex, layer: Layer):
    """layers.following_batchnorm of the OBS layer's output, in inference mode, its channel axis the
    layer's rows; None otherwise."""
    node = following_batchnorm(index, layer.obs_output)
    if node is None or attributes(node).get("training_mode", 0):
        return None
    if layer.op_type != "Conv" and index.rank(layer.obs_output) != 2:
        return None  # BN's channel axis 1 is the layer's rows only for [N, O]
    if any(int(np.prod(index.shape(name) or (0,))) != layer.outputs for name in node.input[1:]):
        return None
    return node


def view_weights(view: LayerView, m: np.ndarray) -> np.ndarray:
    """W' = diag(s) W~ from the model's W~ (a zero bias column appended for a virtual bias)."""
    if view.mean is not None:
        m = np.concatenate([m, np.zeros((len(m), 1))], axis=1)
    return m if view.scale is None else m * view.scale[:, None]


def model_values(view: LayerView, m: np.ndarray, mean: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(the model layer's W~, the BN's new running mean or None) from the OBS result W' = `m`:
    W~ = diag(1/s) W', and with a virtual bias c = its last column, mu - c."""
    if view.scale is not None:
        m = m / view.scale[:, None]
    if view.mean is None:
        return m, None
    return m[:, :-1], np.asarray(mean, dtype=np.float64).reshape(-1) - m[:, -1]
