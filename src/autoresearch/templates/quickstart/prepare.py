"""Frozen: the data and the evaluation of the quickstart task. The agent never edits this.

A three-armed spiral: classify 2-D points into 3 classes; the metric is the validation
cross-entropy (nats per point, lower is better) of the trained model.

How the evaluation stays out of the training run's reach:
- Training data come from a fixed public seed (`load_train()`): train.py may use them freely.
- Validation points are drawn from the same distribution with a seed derived from
  AUTORESEARCH_EVAL_SECRET, a secret of the project that the harness hands only to the
  evaluation process, never to the training run. Training code can fit the task, not the
  validation points: it cannot know them.
- The model is a file, not code: train.py saves an MLP's weights with `save_model()` to
  AUTORESEARCH_CHECKPOINT, and `python prepare.py evaluate` (the harness's evaluation
  command) loads them and runs the forward pass here. No code of the agent's runs while
  the metric is computed, so nothing it prints or patches can reach the number.

By hand: `python train.py` (saves model.npz) then `python prepare.py evaluate --checkpoint
model.npz` (without the secret it uses a public validation seed and says so).
"""

import argparse
import hashlib
import os
import sys

import numpy as np

CLASSES = 3
N_TRAIN = 3000
N_VAL = 1500
TRAIN_SEED = 1234
PUBLIC_VAL_SEED = 5678  # only when no secret is given (a run by hand)
MAX_PARAMS = 1_000_000
BUDGET_S = float(os.environ.get("AUTORESEARCH_BUDGET_S", "2"))  # set by the harness
ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "gelu": lambda z: 0.5 * z * (1.0 + np.tanh(0.7978845608 * (z + 0.044715 * z**3))),
}


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


def load_train():
    """(x_train, y_train), identical on every call."""
    return _spiral(N_TRAIN, np.random.default_rng(TRAIN_SEED))


def _load_val(secret):
    seed = int.from_bytes(hashlib.sha256(f"quickstart-val:{secret}".encode()).digest()[:8], "little")
    return _spiral(N_VAL, np.random.default_rng(seed))


def save_model(layers, activation="tanh", path=None):
    """Save an MLP: `layers` is a list of (weights (n_in, n_out), bias (n_out,)) from 2 inputs to
    CLASSES logits, `activation` one of ACTIVATIONS (between layers; softmax at the end)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
    path = path or os.environ.get("AUTORESEARCH_CHECKPOINT") or "model.npz"
    arrays = {}
    for i, (w, b) in enumerate(layers):
        arrays[f"w{i}"], arrays[f"b{i}"] = np.asarray(w, np.float64), np.asarray(b, np.float64)
    with open(path, "wb") as f:
        np.savez(f, activation=np.array(activation), **arrays)


def load_model(path):
    with np.load(path, allow_pickle=False) as z:
        activation = str(z["activation"])
        n = sum(1 for k in z.files if k.startswith("w"))
        layers = [(z[f"w{i}"], z[f"b{i}"]) for i in range(n)]
    if activation not in ACTIVATIONS or not layers:
        raise ValueError(f"not a quickstart model (activation {activation!r}, {len(layers)} layers)")
    width = 2
    for w, b in layers:
        if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
            raise ValueError(f"layer shapes do not chain: {w.shape} after width {width}")
        width = w.shape[1]
    if width != CLASSES or sum(w.size + b.size for w, b in layers) > MAX_PARAMS:
        raise ValueError(f"the last layer must have {CLASSES} outputs and the model at most {MAX_PARAMS} parameters")
    return layers, activation


def forward(layers, activation, x):
    """Class probabilities (n, CLASSES) of the MLP."""
    act = ACTIVATIONS[activation]
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = act(h)
    h = h - h.max(axis=1, keepdims=True)
    e = np.exp(h)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(p, y):
    p = np.clip(p, 1e-12, 1.0)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def evaluate(path):
    """The validation cross-entropy of the model saved at `path` (run by the harness, not by train.py)."""
    secret = os.environ.get("AUTORESEARCH_EVAL_SECRET", "")
    if not secret:
        print("note: no AUTORESEARCH_EVAL_SECRET: using the public validation seed", flush=True)
    x_val, y_val = _load_val(secret or PUBLIC_VAL_SEED)
    layers, activation = load_model(path)
    p = forward(layers, activation, x_val)
    if not np.all(np.isfinite(p)):
        return float("nan")
    return cross_entropy(p, y_val)


def main(argv=None):
    ap = argparse.ArgumentParser(description="the quickstart's protected half")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("evaluate", help="print val_loss of a saved model")
    ev.add_argument("--checkpoint", default=os.environ.get("AUTORESEARCH_CHECKPOINT") or "model.npz")
    args = ap.parse_args(argv)
    print(f"val_loss: {evaluate(args.checkpoint):.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
