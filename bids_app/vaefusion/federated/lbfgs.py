"""L-BFGS as an ask/tell loop: the server asks for the point to evaluate next, the sites'
summed losses and gradients at that point are told back, one federated round per evaluation.

The objective is smooth and convex (L2-regularised logistic loss), so a backtracking (Armijo)
line search from the quasi-Newton step suffices; nearly every round accepts the full step.
"""

from __future__ import annotations

from collections import deque

import numpy as np

#: Armijo sufficient-decrease constant; curvature pairs kept; backtracking factor.
ARMIJO = 1e-4
MEMORY = 10
BACKTRACK = 0.5


class LBFGS:
    """Minimise ``f`` from ``x0``: call :meth:`ask`, evaluate, :meth:`tell`, until :attr:`done`.

    Converged when the largest absolute gradient component is at most ``gtol`` (as
    scikit-learn's lbfgs solver), or when a line search cannot decrease ``f`` any more
    (float precision reached).
    """

    def __init__(self, x0: np.ndarray, gtol: float = 1e-6, max_evals: int = 100) -> None:
        self.x = np.asarray(x0, dtype=np.float64).copy()
        self.gtol = float(gtol)
        self.max_evals = int(max_evals)
        self.f: float | None = None
        self.g: np.ndarray | None = None
        self.evals = 0
        self.converged = False
        self._pairs: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=MEMORY)
        self._trial = self.x.copy()
        self._direction: np.ndarray | None = None
        self._step = 1.0

    @property
    def done(self) -> bool:
        return self.converged or self.evals >= self.max_evals

    def ask(self) -> np.ndarray:
        """The point whose loss and gradient are needed next."""
        return self._trial

    def tell(self, f: float, g: np.ndarray) -> None:
        """The objective and gradient at the last :meth:`ask` point."""
        g = np.asarray(g, dtype=np.float64)
        self.evals += 1
        if self.f is None:  # the starting point
            self.f, self.g = float(f), g
            self._next_direction()
            return
        assert self._direction is not None and self.g is not None
        slope = float(self.g @ self._direction)
        if np.isfinite(f) and f <= self.f + ARMIJO * self._step * slope:
            s, y = self._trial - self.x, g - self.g
            if float(s @ y) > 1e-12 * float(y @ y):  # keep only positive curvature
                self._pairs.append((s, y))
            self.x, self.f, self.g = self._trial.copy(), float(f), g
            self._next_direction()
            return
        self._step *= BACKTRACK
        if self._step * float(np.abs(self._direction).max()) < 1e-14 * (
                1 + float(np.abs(self.x).max())):
            self.converged = True  # no representable decrease left
            self._trial = self.x.copy()
            return
        self._trial = self.x + self._step * self._direction

    def _next_direction(self) -> None:
        assert self.g is not None
        if float(np.abs(self.g).max()) <= self.gtol:
            self.converged = True
            self._trial = self.x.copy()
            return
        q = self.g.copy()
        alphas = []
        for s, y in reversed(self._pairs):
            a = float(s @ q) / float(y @ s)
            alphas.append(a)
            q -= a * y
        if self._pairs:
            s, y = self._pairs[-1]
            q *= float(s @ y) / float(y @ y)
        else:  # first step: at most unit length
            q /= max(1.0, float(np.linalg.norm(q)))
        for (s, y), a in zip(self._pairs, reversed(alphas), strict=True):
            b = float(y @ q) / float(y @ s)
            q += (a - b) * s
        self._direction = -q
        self._step = 1.0
        self._trial = self.x + self._direction
