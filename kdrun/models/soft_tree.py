"""The soft decision tree of Frosst & Hinton (2017), "Distilling a Neural Network Into a Soft
Decision Tree" (arXiv 1711.09784): a student a person can read.

A complete binary tree of depth D. Inner node i (breadth first: the root is 0, the children of i
are 2i+1 on the left and 2i+2 on the right) is a learned filter over the flattened input:
    p_i(x) = sigmoid(beta * (x . w_i + b_i)),   the probability of taking the right branch;
leaf l holds a learned class distribution Q_l = softmax(phi_l), and P_l(x), the probability of
the path to it, is the product of the branch probabilities along that path (so the P_l(x) of all
leaves sum to 1).

- The label loss (the paper's section 3) is the cross-entropy of each leaf's distribution,
  weighted by the probability of the path to that leaf: -sum_l P_l(x) sum_k T_k log Q_lk. The
  paper's equation 2 prints a log around that sum, -log(sum_l P_l sum_k T_k log Q_lk), which is
  the log of a negative number; its text ("minimize the cross entropy between each leaf, weighted
  by its path probability, and the target distribution") is what is implemented.
- The penalty (section 4) C = -lambda * sum_i 2^-d(i) (0.5 log a_i + 0.5 log(1 - a_i)) pushes each
  inner node i at depth d(i) to send half of the data that reaches it each way, with
  a_i = sum_x P^i(x) p_i(x) / sum_x P^i(x) (P^i: the probability of the path to node i). Both sums
  are exponential moving averages over batches, with a window of `ema_window * 2^d` batches (the
  paper: "a time window that is exponentially proportional to the depth of the node"), kept as
  buffers so that checkpoints (and resume) carry them. The current batch's share carries the
  gradient; the averages of earlier batches are constants.
- beta is fixed (a buffer, saved with the weights), not learned: it scales every filter at once,
  which the filters' own norms can do as well, so its only role is the paper's, to set how soft
  the decisions are (the initial sharpness, and with it how fast they harden).
- Prediction: in evaluation, the distribution of the leaf with the greatest path probability
  (the paper's rule; `prediction="mixture"` gives the path-weighted mixture of the leaves'
  distributions, log sum_l P_l Q_l, instead). In training the output is sum_l P_l(x) log Q_l, the
  leaves' log-distributions averaged with the path probabilities: it becomes the maximum-path
  leaf's log Q as the decisions harden, its gradient reaches every filter and leaf (a KD loss on the
  maximum-path leaf would train that one leaf and no filter), and a KD loss on it at temperature T
  is the paper's leaf-weighted cross-entropy against the soft targets (each leaf softened at T) less
  a Jensen gap that vanishes for hard decisions. These are the logits KD losses soften.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kdrun import KdrunError
from kdrun.models import register_kwargs_check, register_model

PREDICTIONS = ("max_path", "mixture")


def path_log_probs(activations: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P^i of every inner node, log P_l of every leaf) from the inner nodes' pre-sigmoid
    activations (N, 2^depth - 1, breadth first); computed in log space, where a deep path's
    product of probabilities cannot underflow."""
    log_right, log_left = F.logsigmoid(activations), F.logsigmoid(-activations)
    reach = activations.new_zeros(activations.shape[0], 1)  # the root: probability 1
    inner = []
    for d in range(depth):
        lo, hi = 2**d - 1, 2 ** (d + 1) - 1
        inner.append(reach)
        # Node j of this level has children 2j (left) and 2j+1 (right) on the next.
        reach = torch.stack((reach + log_left[:, lo:hi], reach + log_right[:, lo:hi]), dim=2).flatten(1)
    return torch.cat(inner, dim=1), reach


def leaf_weighted_ce(log_path: torch.Tensor, log_q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's loss, averaged over the batch: -sum_l P_l(x) sum_k T_k log Q_lk, for leaf path
    log-probabilities (N, L), leaf log-distributions (L, C) and targets T: labels (N,) or
    distributions (N, C)."""
    if target.dim() == 1:
        per_leaf = log_q[:, target].T  # (N, L): log Q_l,y
    else:
        per_leaf = target @ log_q.T
    return -(log_path.exp() * per_leaf).sum(1).mean()


def mixture_log_probs(log_path: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """log sum_l P_l(x) Q_l: the path-weighted mixture of the leaves' distributions, (N, C)."""
    return torch.logsumexp(log_path[:, :, None] + log_q[None], dim=1)


def path_weighted_log_probs(log_path: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_l P_l(x) log Q_l, (N, C): the leaves' log-distributions averaged with the path
    probabilities (a geometric mixture, unnormalised). As logits, its cross-entropy against any
    target T is the paper's leaf-weighted loss minus a Jensen gap that vanishes as the decisions
    harden, where it becomes the maximum-path leaf's log Q."""
    return log_path.exp() @ log_q


def balance_penalty(alpha: torch.Tensor, depths: torch.Tensor, strength: float) -> torch.Tensor:
    """C = -strength * sum_i 2^-d(i) (0.5 log a_i + 0.5 log(1 - a_i)) over the inner nodes."""
    alpha = alpha.clamp(1e-6, 1 - 1e-6)  # a node no data reaches has no a_i to speak of
    return -strength * (0.5 ** depths * (0.5 * alpha.log() + 0.5 * (1 - alpha).log())).sum()


def node_depths(depth: int) -> torch.Tensor:
    """The depth of each inner node, breadth first."""
    return torch.cat([torch.full((2**d,), float(d)) for d in range(depth)])


class SoftTree(nn.Module):
    """See the module's docstring. After each training forward, `label_loss(y)` and
    `regularizers()` give the loss terms of that batch (every trainer takes them through kdrun.methods.base.label_terms)."""

    def __init__(self, in_features: int, num_classes: int, image_shape: tuple[int, ...], depth: int = 8,
                 beta: float = 1.0, penalty: float = 1.0, ema_window: float = 1.0, prediction: str = "max_path"):
        super().__init__()
        self.depth, self.penalty, self.prediction = depth, float(penalty), prediction
        self.image_shape = tuple(image_shape)  # how a filter is drawn (kdrun.explain)
        inner = 2**depth - 1
        self.inner = nn.Linear(in_features, inner)  # row i: the filter w_i, and its bias b_i
        self.leaves = nn.Parameter(torch.zeros(2**depth, num_classes))  # phi_l: uniform at first
        self.register_buffer("beta", torch.tensor(float(beta)))
        # Exponential moving averages of sum_x P^i(x) p_i(x) and sum_x P^i(x) (per image).
        self.register_buffer("ema_num", torch.zeros(inner))
        self.register_buffer("ema_den", torch.zeros(inner))
        depths = node_depths(depth)
        self.register_buffer("depths", depths, persistent=False)
        self.register_buffer("decay", 1 - 1 / (ema_window * 2**depths), persistent=False)
        self._last: Optional[tuple] = None

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        # float32 under autocast too: the paths are sums of many log-probabilities.
        return self.beta * self.inner(x.flatten(1)).float()

    def paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log P^i of the inner nodes, log P_l of the leaves, log Q of the leaves, the inner nodes'
        activations) for a batch."""
        activations = self.activations(x)
        log_inner, log_leaf = path_log_probs(activations, self.depth)
        return log_inner, log_leaf, F.log_softmax(self.leaves.float(), dim=1), activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_inner, log_leaf, log_q, activations = self.paths(x)
        if not self.training:
            self._last = None
            if self.prediction == "mixture":
                return mixture_log_probs(log_leaf, log_q)
            return log_q[log_leaf.argmax(1)]
        self._last = (log_leaf, log_q, self._alpha(log_inner.exp(), torch.sigmoid(activations)))
        return path_weighted_log_probs(log_leaf, log_q)

    def _alpha(self, reach: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """a_i over the moving window; updates the averages (once per training batch)."""
        num = self.decay * self.ema_num + (1 - self.decay) * (reach * right).mean(0)
        den = self.decay * self.ema_den + (1 - self.decay) * reach.mean(0)
        with torch.no_grad():
            self.ema_num.copy_(num)
            self.ema_den.copy_(den)
        # Zero-initialised averages are biased alike, so their ratio is not: a_i is right from batch 1.
        return num / den.clamp_min(1e-12)

    def label_loss(self, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """The leaf-weighted cross-entropy of the last training batch, against labels (N,) or
        distributions (N, C); with label smoothing, against (1 - e) one-hot + e / C."""
        log_leaf, log_q, _ = self._trained()
        if label_smoothing and target.dim() == 1:
            target = F.one_hot(target, log_q.shape[1]).float() * (1 - label_smoothing) + label_smoothing / log_q.shape[1]
        return leaf_weighted_ce(log_leaf, log_q, target)

    def regularizers(self) -> Dict[str, torch.Tensor]:
        """The penalty of the last training batch, logged as train/loss_tree_penalty."""
        if not self.penalty:
            return {}
        return {"tree_penalty": balance_penalty(self._trained()[2], self.depths, self.penalty)}

    def _trained(self) -> tuple:
        if self._last is None:
            raise RuntimeError("the soft tree's loss terms need a forward pass in training mode first")
        return self._last

    @torch.no_grad()
    def max_path(self, x: torch.Tensor) -> tuple[List[int], List[float], int]:
        """For one image: the inner nodes on the path to its leaf of greatest path probability, each
        node's probability of going right, and that leaf's index."""
        _, log_leaf, _, activations = self.paths(x[None])
        leaf = int(log_leaf[0].argmax())
        nodes, node = [], 0
        for d in reversed(range(self.depth)):  # the leaf's bits, most significant first: 0 left, 1 right
            nodes.append(node)
            node = 2 * node + 1 + ((leaf >> d) & 1)
        return nodes, [float(torch.sigmoid(activations[0, i])) for i in nodes], leaf

    def filters(self) -> torch.Tensor:
        """Each inner node's filter as an image, (2^depth - 1, *image_shape)."""
        return self.inner.weight.detach().view(-1, *self.image_shape)

    def leaf_distributions(self) -> torch.Tensor:
        return F.softmax(self.leaves.detach().float(), dim=1)


@register_kwargs_check("soft_tree")
def check_settings(depth: int = 8, beta: float = 1.0, penalty: float = 1.0, ema_window: float = 1.0,
                   prediction: str = "max_path") -> None:
    """Raises ValueError("key=value: why") for the first bad setting."""
    checks = [("depth", depth, 1 <= depth <= 16, "must be between 1 and 16 (the paper's MNIST tree has 8)"),
              ("beta", beta, beta > 0, "the inverse temperature must be > 0"),
              ("penalty", penalty, penalty >= 0, "the penalty's strength must be >= 0 (0: no penalty)"),
              ("ema_window", ema_window, ema_window >= 1, "the root's averaging window must be >= 1 batch"),
              ("prediction", prediction, prediction in PREDICTIONS, f"choose one of {', '.join(PREDICTIONS)}")]
    for key, value, ok, why in checks:
        if not ok:
            raise ValueError(f"{key}={value}: {why}")


@register_model
def soft_tree(num_classes: int, in_channels: int, image_size: int, depth: int = 8, beta: float = 1.0,
              penalty: float = 1.0, ema_window: float = 1.0, prediction: str = "max_path"):
    """Frosst & Hinton (2017): a soft decision tree over the flattened image."""
    try:
        check_settings(depth, beta, penalty, ema_window, prediction)
    except ValueError as e:  # built outside a run (a run's config checks come first and name the node)
        raise KdrunError(f"soft_tree kwargs.{e}") from None
    shape = (in_channels, image_size, image_size)
    return SoftTree(math.prod(shape), num_classes, shape, int(depth), beta, penalty, ema_window, prediction)
