"""The agent's file: a small MLP trained on the spiral for a fixed time budget.

Everything here may change: the hyper-parameters below, the architecture (any MLP that
prepare.save_model can store: any depth and widths, one of its activations), the optimizer,
the schedule. At the end it saves the model; the harness then runs `python prepare.py
evaluate`, which measures `val_loss` on validation points this process never sees.
"""

import os
import time

import numpy as np

from prepare import BUDGET_S, CLASSES, cross_entropy, load_train, save_model

# Hyper-parameters
LEARNING_RATE = 0.02
MOMENTUM = 0.5
HIDDEN = 12
BATCH_SIZE = 256
WEIGHT_DECAY = 0.003
INIT_SCALE = 0.5
WARMDOWN = 0.2  # fraction of the budget at the end with a decaying learning rate

seed = int(os.environ.get("AUTORESEARCH_SEED", "42"))
rng = np.random.default_rng(seed)
x_train, y_train = load_train()

w1 = rng.normal(0, INIT_SCALE, (2, HIDDEN))
b1 = np.zeros(HIDDEN)
w2 = rng.normal(0, INIT_SCALE / np.sqrt(HIDDEN), (HIDDEN, CLASSES))
b2 = np.zeros(CLASSES)
params = [w1, b1, w2, b2]
velocity = [np.zeros_like(p) for p in params]


def forward(x):
    h = np.tanh(x @ w1 + b1)
    logits = h @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return h, e / e.sum(axis=1, keepdims=True)


start = time.time()
steps = 0
last_print = start
while True:
    progress = (time.time() - start) / BUDGET_S
    if progress >= 1:
        break
    lr = LEARNING_RATE * min(1.0, (1 - progress) / WARMDOWN) if WARMDOWN > 0 else LEARNING_RATE
    idx = rng.integers(0, len(y_train), BATCH_SIZE)
    x, y = x_train[idx], y_train[idx]
    h, p = forward(x)
    d_logits = p.copy()
    d_logits[np.arange(len(y)), y] -= 1
    d_logits /= len(y)
    grads = [None, None, h.T @ d_logits, d_logits.sum(axis=0)]
    d_h = (d_logits @ w2.T) * (1 - h**2)
    grads[0], grads[1] = x.T @ d_h, d_h.sum(axis=0)
    for p_, g, v in zip(params, grads, velocity):
        v *= MOMENTUM
        v += g + WEIGHT_DECAY * p_
        p_ -= lr * v
    steps += 1
    if time.time() - last_print >= 0.5:  # a progress line: the live view shows step and loss (README)
        last_print = time.time()
        batch_loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
        print(f"step {steps} | loss {batch_loss:.4f} | {100 * progress:.0f}% of budget", flush=True)

save_model([(w1, b1), (w2, b2)], activation="tanh")
print(f"num_steps: {steps}")
print(f"training_seconds: {time.time() - start:.1f}")
print(f"train_loss: {cross_entropy(forward(x_train)[1], y_train):.6f}")
