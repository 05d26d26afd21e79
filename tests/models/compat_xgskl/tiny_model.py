"""A stand-in for a pickled scikit-learn estimator: `predict` takes rows, returns a numpy array."""

import numpy as np


class RowSums:
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def predict(self, rows):
        return np.asarray([sum(row) * self.scale for row in rows])
