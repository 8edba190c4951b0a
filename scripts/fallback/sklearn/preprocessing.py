"""``StandardScaler`` with scikit-learn's incremental statistics (float64, population variance)."""
import numpy as np


class StandardScaler:
    """Per-feature mean and standard deviation over every ``partial_fit`` call's rows.

    Features whose variance is 0 get a scale of 1, as scikit-learn gives them.
    """

    def __init__(self):
        self.n_samples_seen_ = 0
        self.mean_ = None
        self.var_ = None
        self.scale_ = None

    def partial_fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        n = X.shape[0]
        if n == 0:
            return self
        mean, var = X.mean(axis=0), X.var(axis=0)
        if self.mean_ is None:
            self.mean_, self.var_, self.n_samples_seen_ = mean, var, n
        else:  # the two sets' statistics combined (Chan, Golub and LeVeque)
            total = self.n_samples_seen_ + n
            delta = mean - self.mean_
            m2 = self.var_ * self.n_samples_seen_ + var * n + delta ** 2 * self.n_samples_seen_ * n / total
            self.mean_ = self.mean_ + delta * n / total
            self.var_, self.n_samples_seen_ = m2 / total, total
        scale = np.sqrt(self.var_)
        self.scale_ = np.where(scale < 10 * np.finfo(np.float64).eps, 1.0, scale)
        return self
