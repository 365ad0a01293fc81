"""The scaling-law fits recover known parameters from synthetic losses."""

import math

import numpy as np
import pytest

from lmstack.experiments.scaling_fit import (ChinchillaFit, KaplanFit, bootstrap_chinchilla, fit_chinchilla,
                                             fit_curve_power_law, fit_kaplan, interpolate_loss, isoflop_optima,
                                             spearman)

TRUE = ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def grid(law, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    n, d = np.meshgrid(np.geomspace(1e7, 1e9, 5), np.geomspace(1e9, 1e11, 5))
    n, d = n.ravel(), d.ravel()
    loss = law.loss(n, d) * np.exp(rng.normal(0, noise, len(n)))
    return n, d, loss


def test_chinchilla_approach3_recovers_the_papers_parameters():
    fit = fit_chinchilla(*grid(TRUE), starts=4)
    assert fit.alpha == pytest.approx(0.34, abs=0.02) and fit.beta == pytest.approx(0.28, abs=0.02)
    assert fit.E == pytest.approx(1.69, rel=0.03)
    n_opt, d_opt = fit.optimum(1e21)
    true_n, true_d = TRUE.optimum(1e21)
    assert n_opt == pytest.approx(true_n, rel=0.15) and 6 * n_opt * d_opt == pytest.approx(1e21, rel=1e-6)
    assert fit.optimal_tokens_for(n_opt) == pytest.approx(d_opt, rel=1e-6)


def test_chinchilla_fit_with_noise_and_bootstrap_interval_covers_truth():
    n, d, loss = grid(TRUE, noise=0.003, seed=1)
    fit = fit_chinchilla(n, d, loss, starts=4)
    assert fit.alpha == pytest.approx(0.34, abs=0.08) and fit.beta == pytest.approx(0.28, abs=0.08)
    boot = bootstrap_chinchilla(n, d, loss, 1e21, samples=8, starts=2)
    assert boot["samples"] >= 6
    lo, hi = boot["tokens_per_param"]["p2.5"], boot["tokens_per_param"]["p97.5"]
    true_n, true_d = TRUE.optimum(1e21)
    assert lo / 3 < true_d / true_n < hi * 3 and lo <= hi


def test_kaplan_fit_recovers_exponents():
    law = KaplanFit(N_c=8.8e13, D_c=5.4e13, alpha_N=0.076, alpha_D=0.095)
    fit = fit_kaplan(*grid(law))
    assert fit.alpha_N == pytest.approx(0.076, abs=0.01) and fit.alpha_D == pytest.approx(0.095, abs=0.01)


def test_isoflop_approaches_find_the_optimum_exponent():
    runs = []
    for n in np.geomspace(1e6, 1e8, 7):
        for d in np.geomspace(1e7, 1e10, 8):
            runs.append({"n": n, "d": d, "flops": 6 * n * d, "loss": float(TRUE.loss(n, d))})
    out = isoflop_optima(runs, levels=5)
    expected = 0.28 / (0.34 + 0.28)
    assert out["approach2"]["a"] == pytest.approx(expected, abs=0.08)
    assert out["approach1"]["levels"] >= 3


def test_helpers():
    assert interpolate_loss([1, 4], [3.0, 2.0], 2) == pytest.approx(2.5)
    assert interpolate_loss([1, 4], [3.0, 2.0], 8) is None
    assert spearman([1, 2, 3, 4], [10, 8, 7, 1]) == pytest.approx(-1.0)
    steps = np.arange(10, 200, 10)
    a, alpha, e = fit_curve_power_law(steps, 2.0 + 5.0 * steps ** -0.5)
    assert alpha == pytest.approx(0.5, abs=0.05) and e == pytest.approx(2.0, abs=0.05)
    with pytest.raises(ValueError, match=">= 5"):
        fit_chinchilla([1, 2], [1, 2], [1, 2])


def test_optimum_of_a_degenerate_fit_is_nan_not_an_error():
    # a bootstrap resample can fit A = 0 (loss flat in N): there is no N-D trade-off, so no optimum
    flat = ChinchillaFit(E=1.0, A=0.0, B=10.0, alpha=0.3, beta=0.3)
    assert all(math.isnan(x) for x in flat.optimum(1e15)) and math.isnan(flat.optimal_tokens_for(1e6))
    tiny_alpha = ChinchillaFit(E=0.3, A=2.0, B=40.0, alpha=1e-4, beta=0.2)
    n_opt, d_opt = tiny_alpha.optimum(1e12)  # would overflow a float outside log space
    assert n_opt > 0 and not math.isnan(d_opt)
