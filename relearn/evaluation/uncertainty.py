"""95% intervals and paired tests: how far each reported number could move on other items.

A real-model evaluation scores a few dozen questions, so one item moves KFR by several points. Every
rate and score therefore carries its item count and an interval, stored beside the point value in a
`ci` mapping at the same level (`metrics["unlearned"]["kfr"]` has its interval at
`metrics["unlearned"]["ci"]["kfr"]`), each interval a dict

    {"value", "low", "high", "n", "method", "level"}      (low/high None when it cannot be computed)

- Proportions (KFR, KRR, per variant, per request, per rung, per probe): the Wilson score interval
  (scipy.stats.binomtest(...).proportion_ci(method="wilson")), good at small n and near 0 or 1,
  where the normal approximation gives intervals outside [0, 1].
- Everything else (LS, ROUGE, MIA AUC, truth ratio, forget quality) and every difference or ratio
  between two models (`ls_ratio`, `mia_auc_excess`, `truth_ratio_vs_control`, relearning excess):
  a seeded percentile bootstrap over items (scipy.stats.bootstrap). The items are what is
  resampled: for a number that compares two models, one resample draws the same questions for both
  (a paired bootstrap), and a number built from two sets (forget and retain, members and
  non-members) resamples each set on its own.

Paired tests between two models on the same items (`relearn compare`):
- `mcnemar`: the exact McNemar test on paired verdicts (forgotten or not under each model): only
  the items where the two disagree count, and under no difference each disagreement goes either
  way with probability 1/2 (scipy.stats.binomtest on the discordant pairs).
- `paired_bootstrap`: the interval of a score's difference, resampling the items jointly, and the
  two-sided bootstrap p-value (twice the share of resampled differences on the far side of 0).

Nothing here reads files: the evaluate stage passes each model's metrics and per-item evidence.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

LEVEL = 0.95
RESAMPLES = 1000
ALPHA = 0.05  # a paired test's p below this is called a significant difference


def _clean(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def interval(value: float | None, low: float | None, high: float | None, n: int, method: str,
             level: float = LEVEL, **extra) -> dict:
    return {"value": _clean(value) if value is not None else None, "low": _clean(low) if low is not None else None,
            "high": _clean(high) if high is not None else None, "n": int(n), "method": method, "level": level,
            **extra}


def wilson(successes: float, n: int, level: float = LEVEL) -> dict:
    """The Wilson score interval of successes / n (successes rounded to a count)."""
    k = int(round(successes))
    if n <= 0:
        return interval(None, None, None, 0, "wilson", level)
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return interval(k / n, ci.low, ci.high, n, "wilson", level)


def bootstrap(sizes: Sequence[int], statistic: Callable[..., float], seed: int, resamples: int = RESAMPLES,
              level: float = LEVEL, value: float | None = None) -> dict:
    """Percentile bootstrap of statistic(idx_1, ..., idx_k) over k samples of items: sample j has
    sizes[j] items and is resampled on its own; statistic gets, for each sample, the resampled
    item indices (so that every per-item quantity of that sample, for every model, is drawn
    jointly). value: the point estimate (default: statistic on all items). n = sum(sizes).
    Needs two items in every sample; low/high are None when some resample's statistic is not
    finite (a ratio over a zero)."""
    return _bootstrap(sizes, statistic, seed, resamples, level, value)[0]


def _bootstrap(sizes: Sequence[int], statistic: Callable[..., float], seed: int, resamples: int, level: float,
               value: float | None = None) -> tuple[dict, Any]:
    """(interval, the resampled statistics or None)."""
    import numpy as np
    from scipy.stats import bootstrap as scipy_bootstrap

    full = [np.arange(s) for s in sizes]
    point = statistic(*full) if value is None else value
    n = int(sum(sizes))
    if not sizes or min(sizes) < 2:
        return interval(point, None, None, n, "bootstrap", level, resamples=0), None
    # the data are item indices: each resample draws items, and with them every quantity of those items
    res = scipy_bootstrap(tuple(full), _guarded(statistic), n_resamples=resamples, confidence_level=level,
                          method="percentile", vectorized=False, paired=False, rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return interval(point, low, high, n, "bootstrap", level, resamples=resamples), res.bootstrap_distribution


def _guarded(statistic: Callable[..., float]) -> Callable[..., float]:
    def run(*idx):
        value = statistic(*(np.asarray(i).astype(int) for i in idx))
        return value if value is not None and math.isfinite(value) else math.nan

    import numpy as np
    return run


def mean_interval(values: Sequence[float | None], seed: int, resamples: int = RESAMPLES, level: float = LEVEL) -> dict:
    """Wilson when every value is 0 or 1 (verdicts), else the bootstrap of the mean; None values skipped."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return interval(None, None, None, 0, "wilson", level)
    if all(v in (0.0, 1.0) for v in vals):
        return wilson(sum(vals), len(vals), level)
    return bootstrap([len(vals)], lambda i: sum(vals[j] for j in i) / len(i), seed, resamples, level)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test of paired verdicts a[i], b[i] (the same item under two models):
    {"b_only", "a_only", "n", "p_value"}; p = 1 when they never disagree."""
    if len(a) != len(b):
        raise ValueError(f"mcnemar needs paired verdicts, got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    p = 1.0
    if a_only + b_only:
        from scipy.stats import binomtest

        p = float(binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "n": len(a), "p_value": p}


def paired_bootstrap(sizes: Sequence[int], difference: Callable[..., float], seed: int,
                     resamples: int = RESAMPLES, level: float = LEVEL) -> dict:
    """The interval of a difference between two models' scores over the same items (difference gets
    the resampled indices of each sample, as in `bootstrap`), plus the two-sided bootstrap p-value:
    twice the smaller share of resampled differences at or beyond 0 on either side (capped at 1)."""
    import numpy as np

    out, draws = _bootstrap(sizes, difference, seed, resamples, level)
    draws = None if draws is None else np.asarray(draws, dtype=float)
    if draws is None or not np.isfinite(draws).all():
        out["p_value"] = None
    else:
        out["p_value"] = float(min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean())))
    return out


def significant(test: Mapping[str, Any], alpha: float = ALPHA) -> bool | None:
    p = test.get("p_value")
    return None if p is None else p < alpha


def describe(ci: Mapping[str, Any] | None, digits: int = 3) -> str:
    """'0.750 [0.468, 0.911], n = 12' (the report's and the CLI's way of writing a number)."""
    if not ci or ci.get("value") is None:
        return "n/a"
    text = f"{ci['value']:.{digits}f}"
    if ci.get("low") is not None and ci.get("high") is not None:
        text += f" [{ci['low']:.{digits - 1}f}, {ci['high']:.{digits - 1}f}]"
    return text + f", n = {ci['n']}"
