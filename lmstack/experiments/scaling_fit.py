"""Fitting scaling laws to (N, D, loss) points: the formulas of Kaplan et al. 2020 and Hoffmann et al. 2022.

- Chinchilla's parametric loss ``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022, eq. 2), fitted
  as in their Appendix D.2 ("Approach 3"): minimise the Huber loss (delta = 1e-3) between
  ``LSE(a - alpha log N, b - beta log D, e)`` and ``log L`` with L-BFGS, from a grid of initialisations
  (alpha, beta in {0, 0.5, .., 2}, e in {-1, -.5, .., 1}, a, b in {0, 5, .., 25}); A = e^a, B = e^b, E = e^e.
  The whole grid is scored and L-BFGS runs from its best starts (the others end in the same minima).
- Kaplan's ``L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D`` (Kaplan et al. 2020, eq. 1.5), fitted
  the same way on log-loss.
- The compute-optimal split for ``C = 6 N D`` (Hoffmann et al. 2022, eq. 4): ``N_opt = G (C/6)^(beta/(alpha+beta))``,
  ``D_opt = G^-1 (C/6)^(alpha/(alpha+beta))``, ``G = (alpha A / (beta B))^(1/(alpha+beta))``.
- Approaches 1 and 2 (IsoFLOP) on the measured grid, bootstrap intervals, and a fit of one run's early loss
  curve that predicts its end.

Only torch and numpy: L-BFGS is ``torch.optim.LBFGS`` in float64.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

HUBER_DELTA = 1e-3
# Published values, for the report
CHINCHILLA_PAPER = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
KAPLAN_PAPER = {"alpha_N": 0.076, "alpha_D": 0.095, "N_c": 8.8e13, "D_c": 5.4e13}


def huber(residual: torch.Tensor, delta: float = HUBER_DELTA) -> torch.Tensor:
    absr = residual.abs()
    return torch.where(absr <= delta, 0.5 * residual**2, delta * (absr - 0.5 * delta))


@dataclass
class ChinchillaFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = float("nan")

    def loss(self, n, d):
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimum(self, compute: float) -> tuple[float, float]:
        """(N_opt, D_opt) for ``compute = 6 N D`` FLOPs."""
        a, b = self.alpha, self.beta
        if not (a * self.A > 0 and b * self.B > 0):
            return float("nan"), float("nan")  # one term is a constant: loss does not trade N against D
        # in logs: a fit with an exponent near 0 sends N_opt or D_opt past a float's range (then inf, not an error)
        log_g = (math.log(a * self.A) - math.log(b * self.B)) / (a + b)
        log_c = math.log(compute / 6)
        with np.errstate(over="ignore"):
            return float(np.exp(log_g + log_c * b / (a + b))), float(np.exp(log_c * a / (a + b) - log_g))

    def optimal_tokens_for(self, n: float) -> float:
        """The D at which ``n`` parameters are compute-optimal (the inverse of N_opt(C))."""
        a, b = self.alpha, self.beta
        if not (a * self.A > 0 and b * self.B > 0):
            return float("nan")
        log_g = (math.log(a * self.A) - math.log(b * self.B)) / (a + b)
        log_c = (math.log(n) - log_g) * (a + b) / b  # log(C / 6) at which N_opt = n
        with np.errstate(over="ignore"):
            return float(np.exp(log_c * a / (a + b) - log_g))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class KaplanFit:
    N_c: float
    D_c: float
    alpha_N: float
    alpha_D: float
    objective: float = float("nan")

    def loss(self, n, d):
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return ((self.N_c / n) ** (self.alpha_N / self.alpha_D) + self.D_c / d) ** self.alpha_D

    def as_dict(self) -> dict:
        return asdict(self)


def _check_points(n, d, loss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, d, loss = (torch.as_tensor(np.asarray(x, dtype=float), dtype=torch.float64) for x in (n, d, loss))
    if not (len(n) == len(d) == len(loss)) or len(n) < 5:
        raise ValueError(f"scaling fit: need >= 5 matching (N, D, loss) points, got {len(n)}, {len(d)}, {len(loss)}")
    if bool((n <= 0).any() | (d <= 0).any() | (loss <= 0).any()):
        raise ValueError("scaling fit: N, D and loss must all be positive")
    return n.log(), d.log(), loss.log()


def _chinchilla_objective(theta: torch.Tensor, log_n, log_d, log_l) -> torch.Tensor:
    """theta = [a, b, e, alpha, beta] (any leading batch dims); summed Huber loss over the points."""
    a, b, e, alpha, beta = (theta[..., i:i + 1] for i in range(5))
    pred = torch.logsumexp(torch.stack([a - alpha * log_n, b - beta * log_d, e.expand_as(a - alpha * log_n)]), 0)
    return huber(pred - log_l).sum(-1)


def _lbfgs(objective, start: torch.Tensor, steps: int = 200) -> tuple[torch.Tensor, float]:
    theta = start.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = objective(theta)
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        value = float(objective(theta))
    return theta.detach(), value


def chinchilla_init_grid() -> torch.Tensor:
    """Hoffmann et al. 2022, Appendix D.2: 5 x 5 x 5 x 6 x 6 = 4500 starting points [a, b, e, alpha, beta]."""
    half = [0.0, 0.5, 1.0, 1.5, 2.0]
    grid = itertools.product([0, 5, 10, 15, 20, 25], [0, 5, 10, 15, 20, 25], [-1, -0.5, 0, 0.5, 1], half, half)
    return torch.tensor(list(grid), dtype=torch.float64)


def fit_chinchilla(n, d, loss, *, starts: int = 8, grid: torch.Tensor | None = None) -> ChinchillaFit:
    """Approach 3: Huber fit of E + A/N^alpha + B/D^beta on log-loss, L-BFGS from the best ``starts`` grid points."""
    log_n, log_d, log_l = _check_points(n, d, loss)
    grid = chinchilla_init_grid() if grid is None else grid
    with torch.no_grad():
        scores = _chinchilla_objective(grid, log_n, log_d, log_l)
    best = None
    for idx in torch.argsort(scores)[:starts].tolist():
        theta, value = _lbfgs(lambda t: _chinchilla_objective(t, log_n, log_d, log_l), grid[idx])
        # a, b, e are logs of A, B, E: past ~700 they are not representable, and such a fit is degenerate anyway
        usable = bool(torch.isfinite(theta).all()) and float(theta[:3].max()) < 700
        if usable and math.isfinite(value) and (best is None or value < best[1]):
            best = (theta, value)
    if best is None:
        raise ValueError("scaling fit: L-BFGS diverged from every start (check the losses)")
    a, b, e, alpha, beta = best[0].tolist()
    return ChinchillaFit(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, objective=best[1])


def _kaplan_objective(theta: torch.Tensor, log_n, log_d, log_l) -> torch.Tensor:
    """theta = [log N_c, log D_c, log alpha_N, log alpha_D] (exponents kept positive)."""
    lnc, ldc, la_n, la_d = (theta[..., i:i + 1] for i in range(4))
    a_n, a_d = la_n.exp(), la_d.exp()
    inner = torch.logsumexp(torch.stack([(a_n / a_d) * (lnc - log_n), (ldc - log_d).expand_as(lnc - log_n)]), 0)
    return huber(a_d * inner - log_l).sum(-1)


def fit_kaplan(n, d, loss, *, starts: int = 16) -> KaplanFit:
    """Kaplan's L(N, D), Huber on log-loss, L-BFGS from the best ``starts`` of a grid of initialisations."""
    log_n, log_d, log_l = _check_points(n, d, loss)
    exps = [math.log(x) for x in (0.03, 0.08, 0.2, 0.5)]
    scales = [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    grid = torch.tensor(list(itertools.product(scales, scales, exps, exps)), dtype=torch.float64)
    with torch.no_grad():
        scores = _kaplan_objective(grid, log_n, log_d, log_l)
    best = None
    for idx in torch.argsort(scores)[:starts].tolist():
        theta, value = _lbfgs(lambda t: _kaplan_objective(t, log_n, log_d, log_l), grid[idx])
        usable = bool(torch.isfinite(theta).all()) and float(theta.max()) < 700
        if usable and math.isfinite(value) and (best is None or value < best[1]):
            best = (theta, value)
    if best is None:
        raise ValueError("scaling fit (Kaplan): L-BFGS diverged from every start")
    lnc, ldc, la_n, la_d = best[0].tolist()
    return KaplanFit(N_c=math.exp(lnc), D_c=math.exp(ldc), alpha_N=math.exp(la_n), alpha_D=math.exp(la_d),
                     objective=best[1])


def bootstrap_chinchilla(n, d, loss, compute: float, *, samples: int = 100, seed: int = 0,
                         starts: int = 6) -> dict:
    """Resample the points with replacement, refit, and report percentiles of alpha, beta and the
    compute-optimal tokens per parameter at ``compute`` FLOPs."""
    n, d, loss = (np.asarray(x, dtype=float) for x in (n, d, loss))
    rng = np.random.default_rng(seed)
    grid = chinchilla_init_grid()
    draws = {"alpha": [], "beta": [], "tokens_per_param": []}
    for _ in range(samples):
        idx = rng.integers(0, len(n), len(n))
        if len(set(n[idx].tolist())) < 2 or len(set(d[idx].tolist())) < 2:
            continue  # a resample with one size or one budget cannot separate the two terms
        try:
            fit = fit_chinchilla(n[idx], d[idx], loss[idx], starts=starts, grid=grid)
        except ValueError:
            continue
        n_opt, d_opt = fit.optimum(compute)
        draws["alpha"].append(fit.alpha)
        draws["beta"].append(fit.beta)
        ratio = d_opt / n_opt if n_opt > 0 else float("nan")
        if math.isfinite(ratio):  # a degenerate resample (a constant term) has no optimum
            draws["tokens_per_param"].append(ratio)
    out = {"samples": len(draws["alpha"])}
    for key, values in draws.items():
        if values:
            lo, mid, hi = np.percentile(values, [2.5, 50, 97.5])
            out[key] = {"p2.5": float(lo), "median": float(mid), "p97.5": float(hi)}
    return out


def interpolate_loss(budgets: list[float], losses: list[float], target: float) -> float | None:
    """A run family's final loss at ``target`` tokens, linear in log tokens between measured budgets (None outside)."""
    order = np.argsort(budgets)
    x = np.log(np.asarray(budgets, dtype=float)[order])
    y = np.asarray(losses, dtype=float)[order]
    t = math.log(target)
    if t < x[0] - 1e-9 or t > x[-1] + 1e-9:
        return None
    return float(np.interp(t, x, y))


def isoflop_optima(runs: list[dict], levels: int = 6) -> dict:
    """Approaches 1 and 2 on a grid of runs {"n", "d", "flops", "loss"} (one size = one ``n``).

    For each of ``levels`` compute budgets C (log-spaced where >= 3 sizes reach C inside their budget range),
    each size's loss at C is interpolated over its budgets. Approach 1 takes the size with the lowest loss
    (the envelope); Approach 2 fits a parabola in log N and takes its minimum (Hoffmann et al. 2022, sec. 3.2).
    Each then fits N_opt = k C^a by least squares in log-log.
    """
    sizes = sorted({r["n"] for r in runs})
    fams = {}
    for n in sizes:
        rows = sorted((r for r in runs if r["n"] == n), key=lambda r: r["d"])
        if len(rows) >= 2:
            fams[n] = {"flops": [r["flops"] for r in rows], "loss": [r["loss"] for r in rows]}
    lo = max(sorted(min(f["flops"]) for f in fams.values())[:max(1, len(fams) - 2)]) if fams else 0
    hi = min(sorted((max(f["flops"]) for f in fams.values()), reverse=True)[:max(1, len(fams) - 2)]) if fams else 0
    result = {"levels": [], "approach1": None, "approach2": None}
    if len(fams) < 3 or not lo < hi:
        return result
    for c in np.geomspace(lo, hi, levels):
        points = [(n, interpolate_loss(f["flops"], f["loss"], c)) for n, f in fams.items()]
        points = [(n, y) for n, y in points if y is not None]
        if len(points) < 3:
            continue
        xs = np.log([p[0] for p in points])
        ys = np.array([p[1] for p in points])
        best_n = float(points[int(np.argmin(ys))][0])
        curv, slope, _ = np.polyfit(xs, ys, 2)
        parabola_n = float(math.exp(-slope / (2 * curv))) if curv > 0 else None
        if parabola_n is not None and not (min(xs) - 1.0 <= math.log(parabola_n) <= max(xs) + 1.0):
            parabola_n = None  # a vertex far outside the measured sizes is not a measurement
        result["levels"].append({"flops": float(c), "envelope_n": best_n, "parabola_n": parabola_n,
                                 "points": [(float(n), float(y)) for n, y in points]})
    for key, field in (("approach1", "envelope_n"), ("approach2", "parabola_n")):
        pts = [(lv["flops"], lv[field]) for lv in result["levels"] if lv[field]]
        if len(pts) >= 2 and len({p[1] for p in pts}) >= 2:
            a, logk = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)
            result[key] = {"a": float(a), "k": float(math.exp(logk)), "levels": len(pts)}
        elif pts:
            result[key] = {"a": float("nan"), "k": float("nan"), "levels": len(pts)}
    return result


def spearman(x, y) -> float:
    """Spearman rank correlation (ties get their average rank)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    if len(x) < 3:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def fit_curve_power_law(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """y = E + A x^-alpha by least squares (L-BFGS on [log A, log alpha, E]), for a loss curve's early part."""
    xt = torch.as_tensor(np.asarray(x, dtype=float), dtype=torch.float64)
    yt = torch.as_tensor(np.asarray(y, dtype=float), dtype=torch.float64)
    if len(xt) < 4:
        raise ValueError(f"early-curve fit: need >= 4 points, got {len(xt)}")

    def objective(theta):
        la, lalpha, e = theta[0], theta[1], theta[2]
        pred = e + la.exp() * xt.pow(-lalpha.exp())
        return ((pred - yt) ** 2).mean()

    best = None
    floor = float(yt.min())
    for e0, alpha0 in itertools.product([0.0, floor * 0.8], [0.3, 1.0]):
        a0 = max(1e-3, float(yt[0]) - e0) * float(xt[0]) ** alpha0
        start = torch.tensor([math.log(a0), math.log(alpha0), e0], dtype=torch.float64)
        theta, value = _lbfgs(objective, start, steps=150)
        if math.isfinite(value) and (best is None or value < best[1]):
            best = (theta, value)
    la, lalpha, e = best[0].tolist()
    return math.exp(la), math.exp(lalpha), e
