"""The file the agent may change. Replace this with your own experiment."""

from score import score

X = 1.0
Y = 2.0

print(f"score: {score(X, Y):.6f}")
