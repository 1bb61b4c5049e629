"""The protected judge: replace it with how your result is scored."""


def score(x: float, y: float) -> float:
    return -((x - 3.0) ** 2) - ((y + 1.0) ** 2)
