"""LS (linguistic score) and its parts, as in ReLearn (Xu et al., ACL 2025).

Over a set of answers: PPL (perplexity of each answer given its question under a reference
model, computed by the caller), Brunet's index W and Honore's statistic H (per answer, on
lower-cased word tokens), each averaged over the set. Then squashed to [0, 1):
    p = 1 / (1 + PPL)     fluency, higher is better
    b = 1 / (1 + W)       W falls as vocabulary gets richer, so b rises
    h = H / (1 + H)       H rises as more words are used once
    LS = 3 / (1/p + 1/b + 1/h)   (harmonic mean; 0 when any part is 0)

Degenerate answers: an empty answer has W = 0 and H = 0 (and its PPL is inf, see `perplexity`);
a one-token answer has H = 0 (ln 1 = 0). A set that says nothing therefore gets h = 0 and LS = 0.
A non-finite PPL (inf, or NaN from a diverged model) counts as inf, giving p = 0 and LS = 0.

The set's PPL is the arithmetic mean (the paper's, and the default). One answer with an
astronomical PPL under the reference model then decides p for the whole set, so
`ppl_aggregate` (params: evaluate.ppl_aggregate) offers robust alternatives:
    mean     sum(PPL_i) / n                         (default: the paper's number)
    median   the middle value (mean of the two middle values for even n); an inf among fewer than
             half of the answers does not change it
    geomean  exp(mean(ln PPL_i)), i.e. exp of the mean per-answer NLL per token; inf if any PPL
             is inf, 0 if any is 0 (and none is inf)
W and H are always arithmetic means. The output's 'ppl' is the aggregate used for p; 'ppl_mean'
is always the arithmetic mean and 'ppl_aggregate' names the aggregate.
"""
from __future__ import annotations

import math
import re


def word_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters and digits, keeping inner apostrophes ("don't" is one token)."""
    return re.findall(r"[^\W_]+(?:'[^\W_]+)*", text.lower().replace("\u2019", "'"))


def brunet_index(tokens: list[str]) -> float:
    """W = N ** (V ** -0.165), N tokens, V distinct tokens; 0.0 for no tokens."""
    n, v = len(tokens), len(set(tokens))
    if n == 0:
        return 0.0
    return n ** (v ** -0.165)


def honore_statistic(tokens: list[str]) -> float:
    """H = 100 * ln(N) / (1 - V1/V + 0.1), N tokens, V distinct, V1 seen once; 0.0 for no tokens.

    The + 0.1 keeps the denominator >= 0.1 when every token is seen once (V1 = V).
    """
    n = len(tokens)
    if n == 0:
        return 0.0
    counts: dict[str, int] = {}
    for t in tokens:
        counts[t] = counts.get(t, 0) + 1
    v = len(counts)
    v1 = sum(1 for c in counts.values() if c == 1)
    return 100 * math.log(n) / (1 - v1 / v + 0.1)


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(nll_sum / n_tokens), nll_sum the summed negative log-likelihood (nats) of the tokens.

    inf when there are no tokens, the result overflows, or nll_sum is not finite.
    """
    if n_tokens <= 0 or not math.isfinite(nll_sum):
        return math.inf
    try:
        return math.exp(nll_sum / n_tokens)
    except OverflowError:
        return math.inf


PPL_AGGREGATES = ("mean", "median", "geomean")


def aggregate_ppl(ppls: list[float], how: str = "mean") -> float:
    """The set's PPL from per-answer perplexities (>= 0, inf allowed, no NaN): mean, median or geomean."""
    if not ppls:
        raise ValueError("aggregate_ppl needs at least one perplexity")
    if how == "mean":
        return sum(ppls) / len(ppls)
    if how == "median":
        ordered = sorted(ppls)
        mid = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[mid]
        return (ordered[mid - 1] + ordered[mid]) / 2
    if how == "geomean":
        if any(math.isinf(x) for x in ppls):
            return math.inf
        if any(x == 0 for x in ppls):
            return 0.0
        return math.exp(math.fsum(math.log(x) for x in ppls) / len(ppls))
    raise ValueError(f"ppl aggregate must be one of {', '.join(PPL_AGGREGATES)}, got {how!r}")


def ls_from_means(ppl: float, brunet: float, honore: float, ppl_mean: float | None = None,
                  ppl_aggregate: str = "mean") -> dict:
    """Squash set-level PPL, W, H to p, b, h and take their harmonic mean (0 when any part is 0).

    `ppl` is the aggregate used for p; ppl_mean (default: ppl) and ppl_aggregate are recorded as given.
    """
    p = 0.0 if math.isinf(ppl) else 1 / (1 + ppl)
    b = 1 / (1 + brunet)
    h = honore / (1 + honore)
    ls = 0.0 if min(p, b, h) == 0 else 3 / (1 / p + 1 / b + 1 / h)
    return {"ls": ls, "ppl": ppl, "brunet": brunet, "honore": honore, "p": p, "b": b, "h": h,
            "ppl_mean": ppl if ppl_mean is None else ppl_mean, "ppl_aggregate": ppl_aggregate}


def linguistic_score(answers: list[str], ppls: list[float], ppl_aggregate: str = "mean") -> dict:
    """LS over a set: PPL aggregated over the answers (`aggregate_ppl`, default the mean), mean W and
    mean H, then `ls_from_means`.

    ppls[i] is the perplexity of answers[i]; NaN counts as inf. Returns
    {'ls', 'ppl', 'brunet', 'honore', 'p', 'b', 'h', 'ppl_mean', 'ppl_aggregate'}.
    """
    if len(answers) != len(ppls):
        raise ValueError(f"{len(answers)} answers for {len(ppls)} perplexities")
    if not answers:
        raise ValueError("linguistic_score needs at least one answer")
    if any(x < 0 for x in ppls):
        raise ValueError("perplexities must be >= 0")
    if ppl_aggregate not in PPL_AGGREGATES:
        raise ValueError(f"ppl_aggregate must be one of {', '.join(PPL_AGGREGATES)}, got {ppl_aggregate!r}")
    ppls = [math.inf if math.isnan(x) else x for x in ppls]
    tokens = [word_tokens(a) for a in answers]
    ppl_mean = aggregate_ppl(ppls, "mean")
    ppl = aggregate_ppl(ppls, ppl_aggregate)
    brunet = sum(brunet_index(t) for t in tokens) / len(tokens)
    honore = sum(honore_statistic(t) for t in tokens) / len(tokens)
    return ls_from_means(ppl, brunet, honore, ppl_mean=ppl_mean, ppl_aggregate=ppl_aggregate)
