"""Frozen: the data and the evaluation of the quickstart task. The agent never edits this.

A three-armed spiral: classify 2-D points into 3 classes. The data are generated from a
fixed seed, so every run sees the same train and validation sets. `evaluate(predict)`
returns the validation cross-entropy (nats per point) of a function that maps points to
class probabilities: lower is better.
"""

import os

import numpy as np

CLASSES = 3
N_TRAIN = 3000
N_VAL = 1500
BUDGET_S = float(os.environ.get("AUTORESEARCH_BUDGET_S", "2"))  # set by the harness


def _spiral(n, rng):
    per = n // CLASSES
    xs, ys = [], []
    for c in range(CLASSES):
        r = np.linspace(0.05, 1.0, per)
        t = np.linspace(c * 2 * np.pi / CLASSES, c * 2 * np.pi / CLASSES + 3.5, per) + rng.normal(0, 0.25, per)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(per, c))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(len(y))
    return x[order].astype(np.float64), y[order]


def load_data():
    """(x_train, y_train, x_val, y_val), identical on every call."""
    rng = np.random.default_rng(1234)
    x_train, y_train = _spiral(N_TRAIN, rng)
    x_val, y_val = _spiral(N_VAL, rng)
    return x_train, y_train, x_val, y_val


def evaluate(predict):
    """Validation cross-entropy of `predict(x) -> probabilities (n, CLASSES)`."""
    _, _, x_val, y_val = load_data()
    p = np.asarray(predict(x_val), dtype=np.float64)
    if p.shape != (len(y_val), CLASSES) or not np.all(np.isfinite(p)):
        return float("nan")
    p = np.clip(p / p.sum(axis=1, keepdims=True), 1e-12, 1.0)
    return float(-np.mean(np.log(p[np.arange(len(y_val)), y_val])))
