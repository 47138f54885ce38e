"""Summary statistics of per-utterance or per-seed scores: the one 95% confidence interval."""

import math

import pandas as pd
from scipy.stats import t as student_t


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, 95% CI half-width (Student t; NaN for fewer than two values) and n of the non-missing values."""
    values = values.dropna().astype(float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(values.mean())
    if n == 1:
        return mean, math.nan, 1
    return mean, float(student_t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)), n
