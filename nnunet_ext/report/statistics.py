"""Group statistics for nested data: subjects are the units, axons are repeated measures within them.

- :func:`compare_groups` tests subject-level values between groups: Welch's t-test (two groups) or one-way ANOVA
  (more), or their rank counterparts Mann-Whitney U and Kruskal-Wallis, with effect sizes (Hedges' g, rank-biserial
  correlation, eta squared, epsilon squared). It refuses, saying why, when a group has fewer than two subjects.
- :func:`mixed_model` fits ``metric ~ group [+ axon diameter] [+ covariates] + (1 | subject)`` to the axons with
  statsmodels' ``MixedLM`` (REML), so that axon-level data enter without treating axons as independent.
- :func:`gratio_fits` fits ``g-ratio = intercept + slope x axon diameter`` per unit (ordinary least squares on the
  unit's axons, t-based 95 % confidence intervals); :func:`slopes_across_subjects` gives a group's mean subject
  slope with a confidence interval over subjects.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as st

from nnunet_ext.report.inputs import string_keys

__all__ = ["TESTS", "compare_groups", "group_tests", "holm", "mixed_model", "random_intercept_reml",
           "gratio_fits", "slopes_across_subjects"]

TESTS = ("auto", "parametric", "rank")
MIN_SUBJECTS = 2


def _clean_groups(values: pd.DataFrame, group: str, value: str, order) -> dict[str, np.ndarray]:
    data = values[[group, value]].dropna()
    data = data.loc[np.isfinite(data[value].astype(float))]
    order = [str(g) for g in order] if order is not None else sorted(map(str, pd.unique(data[group])))
    return {g: data.loc[data[group].astype(str) == g, value].to_numpy(float) for g in order}


def _hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    n1, n2 = len(a), len(b)
    pooled = math.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))
    if pooled == 0:
        return math.nan
    return (b.mean() - a.mean()) / pooled * (1 - 3 / (4 * (n1 + n2) - 9))


def compare_groups(values: pd.DataFrame, value: str, group: str = "group", order=None, test: str = "auto",
                   alpha: float = 0.05) -> dict:
    """Compare one subject-level value between groups.

    Parameters
    ----------
    values : DataFrame
        One row per subject with columns ``group`` and ``value`` (NaN values are left out).
    value, group : str
        Column names.
    order : sequence, optional
        Groups in order; the first is the reference (differences are *other - reference*). Default: sorted.
    test : {"auto", "parametric", "rank"}
        ``parametric``: Welch's t-test (2 groups) or one-way ANOVA; ``rank``: Mann-Whitney U or Kruskal-Wallis;
        ``auto``: parametric unless a Shapiro-Wilk test rejects normality (p < ``alpha``) of the subject values of a
        group with at least 3 subjects. Both tests are computed; ``test`` picks the one reported as primary.
    alpha : float
        Level of the Shapiro-Wilk check.

    Returns
    -------
    dict
        ``status`` (``done`` or ``refused``), ``reason`` (why this test / why refused), ``groups`` (``name: n``),
        ``means``, ``test``, ``statistic``, ``p_value``, ``effect_size_name``, ``effect_size``, ``difference``,
        ``ci_low``, ``ci_high`` (two groups, parametric: 95 % CI of the difference of means) and the other test's
        ``alt_test``, ``alt_statistic``, ``alt_p_value``, ``alt_effect_size_name``, ``alt_effect_size``.
    """
    if test not in TESTS:
        raise ValueError(f"--test {test}: one of {', '.join(TESTS)}")
    samples = _clean_groups(values, group, value, order)
    result = {"value": value, "status": "refused", "reason": "", "groups": "; ".join(
        f"{g}: {len(v)}" for g, v in samples.items()), "means": "; ".join(
        f"{g}: {v.mean():.4g}" if len(v) else f"{g}: -" for g, v in samples.items()),
              "test": "", "statistic": np.nan, "p_value": np.nan, "effect_size_name": "", "effect_size": np.nan,
              "difference": np.nan, "ci_low": np.nan, "ci_high": np.nan, "alt_test": "", "alt_statistic": np.nan,
              "alt_p_value": np.nan, "alt_effect_size_name": "", "alt_effect_size": np.nan}
    if len(samples) < 2:
        result["reason"] = "only one group: nothing to compare"
        return result
    small = [f"'{g}' has {len(v)}" for g, v in samples.items() if len(v) < MIN_SUBJECTS]
    if small:
        result["reason"] = (f"refused: group {', '.join(small)} subject(s) with a value; a test between groups "
                            f"needs at least {MIN_SUBJECTS} subjects per group (subjects, not axons, are the "
                            f"independent units)")
        return result
    arrays = list(samples.values())
    if all(np.ptp(a) == 0 for a in arrays) and len({a[0] for a in arrays}) == 1:
        result["reason"] = "refused: every subject has the same value"
        return result
    # choose
    if test == "auto":
        checked = {g: st.shapiro(v).pvalue for g, v in samples.items() if len(v) >= 3 and np.ptp(v) > 0}
        rejected = {g: p for g, p in checked.items() if p < alpha}
        if rejected:
            primary = "rank"
            why = ("Shapiro-Wilk rejects normality of the subject values in " + ", ".join(
                f"'{g}' (p = {p:.3g})" for g, p in rejected.items()) + ": rank-based test")
        elif len(checked) == len(samples):
            primary = "parametric"
            why = f"Shapiro-Wilk does not reject normality of the subject values in any group (p >= {alpha:g})"
        else:
            primary = "parametric"
            why = "too few subjects to check normality (Shapiro-Wilk needs 3 per group); parametric test by default"
    else:
        primary = test
        why = f"--test {test}"
    two = len(arrays) == 2
    parametric, rank = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if two:
            a, b = arrays
            welch = st.ttest_ind(b, a, equal_var=False)
            ci = welch.confidence_interval(0.95)
            parametric = {"test": "Welch's t-test", "statistic": float(welch.statistic),
                          "p_value": float(welch.pvalue), "effect_size_name": "Hedges' g",
                          "effect_size": _hedges_g(a, b), "difference": float(b.mean() - a.mean()),
                          "ci_low": float(ci.low), "ci_high": float(ci.high)}
            mw = st.mannwhitneyu(b, a, alternative="two-sided")
            rank = {"test": "Mann-Whitney U", "statistic": float(mw.statistic), "p_value": float(mw.pvalue),
                    "effect_size_name": "rank-biserial r",
                    "effect_size": float(2 * mw.statistic / (len(a) * len(b)) - 1)}
            why_test = ("two groups; Welch's t-test does not assume equal variances" if primary == "parametric"
                        else "two groups; Mann-Whitney U compares ranks")
        else:
            anova = st.f_oneway(*arrays)
            pooled = np.concatenate(arrays)
            ss_total = ((pooled - pooled.mean()) ** 2).sum()
            ss_between = sum(len(a) * (a.mean() - pooled.mean()) ** 2 for a in arrays)
            parametric = {"test": "one-way ANOVA", "statistic": float(anova.statistic),
                          "p_value": float(anova.pvalue), "effect_size_name": "eta squared",
                          "effect_size": float(ss_between / ss_total) if ss_total > 0 else np.nan}
            kw = st.kruskal(*arrays)
            rank = {"test": "Kruskal-Wallis", "statistic": float(kw.statistic), "p_value": float(kw.pvalue),
                    "effect_size_name": "epsilon squared",
                    "effect_size": float(kw.statistic / (len(pooled) - 1))}
            why_test = (f"{len(arrays)} groups; one-way ANOVA on subject values" if primary == "parametric"
                        else f"{len(arrays)} groups; Kruskal-Wallis compares ranks")
    chosen, other = (parametric, rank) if primary == "parametric" else (rank, parametric)
    result.update(chosen)
    result.update({"alt_test": other["test"], "alt_statistic": other["statistic"], "alt_p_value": other["p_value"],
                   "alt_effect_size_name": other["effect_size_name"], "alt_effect_size": other["effect_size"]})
    result["status"] = "done"
    result["reason"] = f"{why}; {why_test}; one value per subject"
    return result


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def group_tests(subjects: pd.DataFrame, values, order=None, test: str = "auto", labels=None,
                extra_columns: dict | None = None) -> pd.DataFrame:
    """:func:`compare_groups` for several subject-level values; Holm-adjusted p-values over the tests done.

    Parameters
    ----------
    subjects : DataFrame
        One row per subject with ``group`` and the ``values`` columns.
    values : sequence of str
    order, test
        As :func:`compare_groups`.
    labels : dict, optional
        ``{value column: label}`` for the ``metric`` column.
    extra_columns : dict, optional
        Constant columns to insert first (e.g. ``{"bin": "0.5-1"}``).

    Returns
    -------
    DataFrame
        One row per value (``metric`` first), :func:`compare_groups`'s keys, and ``p_holm``.
    """
    rows = []
    for value in values:
        row = compare_groups(subjects, value, "group", order, test)
        row = {"metric": (labels or {}).get(value, value), **{k: v for k, v in row.items() if k != "value"}}
        rows.append({**(extra_columns or {}), **row})
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = holm(table["p_value"])
        first = [*(extra_columns or {}), "metric", "test", "statistic", "p_value", "p_holm", "effect_size_name",
                 "effect_size", "difference", "ci_low", "ci_high", "groups", "means"]
        table = table[first + [c for c in table.columns if c not in first and c not in ("status", "reason")]
                      + ["status", "reason"]]
    return table


# ----------------------------------------------------------------------------------------------------------------
# Linear mixed models


def _design(data: pd.DataFrame, order, covariates) -> tuple[pd.DataFrame, list[str]]:
    columns = {"Intercept": np.ones(len(data))}
    group_terms = []
    groups = string_keys(data["group"])
    for name in order[1:]:
        term = f"group[{name}]"
        columns[term] = (groups == str(name)).to_numpy(float)
        group_terms.append(term)
    for covariate in covariates:
        values = data[covariate]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all():
            columns[covariate] = numeric.to_numpy(float)
        else:
            levels = sorted(pd.unique(values.astype(str)))
            for level in levels[1:]:
                columns[f"{covariate}[{level}]"] = (values.astype(str).to_numpy() == level).astype(float)
    return pd.DataFrame(columns, index=data.index), group_terms


def random_intercept_reml(y, X, groups) -> tuple[np.ndarray, float, float]:
    """REML estimates of ``y = X b + u[group] + e`` with ``u ~ N(0, tau^2)``, ``e ~ N(0, sigma^2)``.

    Exact profile REML from per-group sums (cost linear in the rows, then per group): used as the starting point of
    statsmodels' fit, which then only has to confirm the optimum.

    Returns
    -------
    beta : ndarray
        Fixed effects (GLS at the optimum).
    ratio : float
        ``tau^2 / sigma^2``.
    sigma2 : float
        Residual variance.
    """
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    codes, _ = pd.factorize(np.asarray(groups))
    k = codes.max() + 1
    n_i = np.bincount(codes, minlength=k).astype(float)
    sx = np.stack([np.bincount(codes, X[:, j], minlength=k) for j in range(X.shape[1])], 1)
    sy = np.bincount(codes, y, minlength=k)
    xtx, xty, yty = X.T @ X, X.T @ y, y @ y
    n, p = X.shape

    def parts(log_ratio):
        ratio = math.exp(log_ratio)
        c = ratio / (1 + n_i * ratio)
        a = xtx - (sx * c[:, None]).T @ sx
        bvec = xty - (sx * c[:, None]).T @ sy
        r = yty - (c * sy * sy).sum()
        beta = np.linalg.solve(a, bvec)
        rss = r - bvec @ beta
        return ratio, a, beta, rss

    def objective(log_ratio):
        ratio, a, _, rss = parts(log_ratio)
        sign, logdet = np.linalg.slogdet(a)
        if rss <= 0 or sign <= 0:
            return np.inf
        return (n - p) * math.log(rss / (n - p)) + np.log1p(n_i * ratio).sum() + logdet

    from scipy.optimize import minimize_scalar

    grid = np.linspace(-16, 6, 23)
    values = [objective(g) for g in grid]
    best = int(np.argmin(values))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    found = minimize_scalar(objective, bounds=(low, high), method="bounded", options={"xatol": 1e-8})
    ratio, _, beta, rss = parts(found.x)
    return beta, ratio, rss / (n - p)


def mixed_model(axons: pd.DataFrame, metric: str, order, diameter: bool = True, covariates=(),
                subject: str = "subject") -> tuple[pd.DataFrame, dict]:
    """Fit ``metric ~ group [+ axon_diam] [+ covariates] + (1 | subject)`` to the axons (statsmodels MixedLM, REML).

    Parameters
    ----------
    axons : DataFrame
        Per-axon rows with ``group``, ``subject``, ``metric`` and ``axon_diam (um)``. Rows with a missing value are
        left out.
    metric : str
    order : sequence
        Groups; the first is the reference level (treatment coding).
    diameter : bool
        Adjust for axon diameter (ignored when ``metric`` is the diameter).
    covariates : sequence of str
        Further columns (numeric, or categorical with treatment coding).
    subject : str
        Column of the random intercept.

    Returns
    -------
    terms : DataFrame
        One row per fixed effect: ``metric``, ``formula``, ``term``, ``coef``, ``se``, ``z``, ``p_value``,
        ``ci_low``, ``ci_high``.
    fit : dict
        ``metric``, ``formula``, ``status``, ``reason``, ``n_axons``, ``n_subjects``, ``subject_variance``,
        ``residual_variance``, ``icc``, ``converged``, ``warnings``.
    """
    from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMParams  # not statsmodels.api: 0.5 s less

    adjust = diameter and metric != "axon_diam (um)"
    needed = [metric, "group", subject, *(["axon_diam (um)"] if adjust else []), *covariates]
    data = axons[list(dict.fromkeys(needed))].dropna()
    data = data.loc[np.isfinite(data[metric].to_numpy(float))]
    group_keys = string_keys(data["group"])
    order = [str(g) for g in order if (group_keys == str(g)).any()]
    rhs = ["group"] + (["axon_diam"] if adjust else []) + list(covariates)
    formula = f"{metric} ~ {' + '.join(rhs)} + (1 | {subject})"
    subject_keys = string_keys(data[subject])
    n_subjects = subject_keys.nunique()
    fit = {"metric": metric, "formula": formula, "status": "refused", "n_axons": len(data),
           "n_subjects": n_subjects, "subject_variance": np.nan, "residual_variance": np.nan, "icc": np.nan,
           "converged": False, "warnings": "", "reason": ""}
    per_group = subject_keys.groupby(group_keys, observed=True).nunique()
    per_group.index = per_group.index.astype(str)
    if len(order) < 2:
        fit["reason"] = "fewer than two groups with axons"
        return pd.DataFrame(), fit
    small = [f"'{g}' has {int(per_group.get(g, 0))}" for g in order if per_group.get(g, 0) < MIN_SUBJECTS]
    if small:
        fit["reason"] = (f"refused: group {', '.join(small)} subject(s) with axons; the model needs at least "
                         f"{MIN_SUBJECTS} subjects per group to separate groups from subjects")
        return pd.DataFrame(), fit
    exog, _ = _design(data.rename(columns={"axon_diam (um)": "axon_diam"}) if adjust else data, order,
                      (["axon_diam"] if adjust else []) + list(covariates))
    y = data[metric].to_numpy(float)
    groups = subject_keys.cat.codes.to_numpy() if isinstance(subject_keys.dtype, pd.CategoricalDtype) else \
        subject_keys.to_numpy()
    try:
        beta, ratio, _ = random_intercept_reml(y, exog.to_numpy(), groups)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = MixedLM(y, exog, groups=groups)
            start = MixedLMParams.from_components(fe_params=beta, cov_re=np.array([[max(ratio, 1e-10)]]))
            result = model.fit(reml=True, start_params=start)
    except (np.linalg.LinAlgError, ValueError) as error:
        fit.update(status="failed", reason=f"the model could not be fitted ({error}); a covariate may be constant "
                                           f"or confounded with the groups")
        return pd.DataFrame(), fit
    # statsmodels warns of a boundary fit whenever the subject variance is below 0.01 in absolute terms, which is
    # every g-ratio model; the boundary is judged relative to the residual variance below instead.
    messages = sorted({str(w.message).split("\n")[0] for w in caught
                       if "boundary of the parameter space" not in str(w.message)})
    ci = np.asarray(result.conf_int(0.05))
    names = list(exog.columns)
    fe = len(names)
    terms = pd.DataFrame({
        "metric": metric, "formula": formula, "term": names, "coef": np.asarray(result.fe_params, float),
        "se": np.asarray(result.bse_fe, float), "z": np.asarray(result.tvalues, float)[:fe],
        "p_value": np.asarray(result.pvalues, float)[:fe], "ci_low": ci[:fe, 0], "ci_high": ci[:fe, 1]})
    subject_variance = float(np.asarray(result.cov_re)[0, 0])
    residual = float(result.scale)
    if subject_variance <= 1e-6 * residual:
        messages.append("subject variance estimated at 0 (boundary): the model reduces to ordinary least squares")
    fit.update(status="done", reason="REML; random intercept per subject; treatment coding, reference group "
               f"'{order[0]}'", subject_variance=subject_variance, residual_variance=residual,
               icc=subject_variance / (subject_variance + residual) if subject_variance + residual > 0 else np.nan,
               converged=bool(result.converged), warnings="; ".join(messages))
    return terms, fit


# ----------------------------------------------------------------------------------------------------------------
# g-ratio versus axon diameter


def gratio_fits(axons: pd.DataFrame, by: str, units=None, x: str = "axon_diam (um)", y: str = "gratio",
                level: float = 0.95) -> pd.DataFrame:
    """Least-squares line ``y = intercept + slope * x`` per unit, from per-unit sums (vectorised).

    Parameters
    ----------
    axons : DataFrame
        Per-axon rows with ``by``, ``x`` and ``y`` (rows with NaN are left out).
    by : str
        Unit column (``subject`` or ``group``).
    units : sequence, optional
        Units to report in order (a unit with fewer than 3 axons gets NaN with a note).
    level : float
        Confidence level of the t-based intervals (df = n - 2). Within a unit the axons are treated as
        independent, which holds for a subject's line, not for a group's pooled line (see
        :func:`slopes_across_subjects`).

    Returns
    -------
    DataFrame
        ``by``, ``n``, ``slope``, ``slope_ci_low``, ``slope_ci_high``, ``intercept``, ``intercept_ci_low``,
        ``intercept_ci_high``, ``r2``, ``p_slope``, ``note``.
    """
    data = axons[[by, x, y]].dropna()
    keys = string_keys(data[by])
    xv, yv = data[x].to_numpy(float), data[y].to_numpy(float)
    frame = pd.DataFrame({"k": keys.to_numpy() if not isinstance(keys.dtype, pd.CategoricalDtype) else keys.values,
                          "x": xv, "y": yv, "xx": xv * xv, "xy": xv * yv, "yy": yv * yv})
    sums = frame.groupby("k", sort=False, observed=True).agg(n=("x", "size"), sx=("x", "sum"), sy=("y", "sum"),
                                              sxx=("xx", "sum"), sxy=("xy", "sum"), syy=("yy", "sum"))
    sums.index = sums.index.astype(str)
    if units is None:
        units = list(sums.index)
    sums = sums.reindex([str(u) for u in units])
    n = sums["n"].fillna(0).to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = sums["sx"].to_numpy() / n, sums["sy"].to_numpy() / n
        cxx = sums["sxx"].to_numpy() - n * mx * mx
        cxy = sums["sxy"].to_numpy() - n * mx * my
        cyy = sums["syy"].to_numpy() - n * my * my
        slope = cxy / cxx
        intercept = my - slope * mx
        rss = np.clip(cyy - slope * cxy, 0, None)
        s2 = rss / (n - 2)
        se_slope = np.sqrt(s2 / cxx)
        se_intercept = np.sqrt(s2 * (1 / n + mx * mx / cxx))
        tcrit = st.t.ppf(0.5 + level / 2, n - 2)
        r2 = np.where(cyy > 0, 1 - rss / cyy, np.nan)
        p_slope = 2 * st.t.sf(np.abs(slope / se_slope), n - 2)
    few = n < 3
    flat = ~few & ~(cxx > 0)
    for array in (slope, intercept, se_slope, se_intercept, r2, p_slope):
        array[few | flat] = np.nan
    table = pd.DataFrame({
        by: [str(u) for u in units], "n": n.astype(int), "slope": slope, "slope_ci_low": slope - tcrit * se_slope,
        "slope_ci_high": slope + tcrit * se_slope, "intercept": intercept,
        "intercept_ci_low": intercept - tcrit * se_intercept, "intercept_ci_high": intercept + tcrit * se_intercept,
        "r2": r2, "p_slope": p_slope,
        "note": np.where(few, "fewer than 3 axons", np.where(flat, "all axons of one diameter", ""))})
    return table


def slopes_across_subjects(subject_fits: pd.DataFrame, group_of: dict, order, level: float = 0.95
                           ) -> pd.DataFrame:
    """A group's mean subject slope and intercept with a t-based confidence interval over its subjects.

    This is the group-level g-ratio vs diameter relation with subjects as the units (the pooled line's interval
    treats every axon as independent and is too narrow).

    Returns
    -------
    DataFrame
        ``group``, ``n_subjects``, ``mean_slope``, ``slope_ci_low``, ``slope_ci_high``, ``mean_intercept``,
        ``intercept_ci_low``, ``intercept_ci_high``, ``note``.
    """
    fits = subject_fits.assign(group=subject_fits["subject"].map(group_of))
    rows = []
    for group in order:
        part = fits.loc[(fits["group"].astype(str) == str(group)) & fits["slope"].notna()]
        k = len(part)
        row = {"group": str(group), "n_subjects": k}
        for name in ("slope", "intercept"):
            values = part[name].to_numpy(float)
            mean = values.mean() if k else np.nan
            if k >= 2:
                half = st.t.ppf(0.5 + level / 2, k - 1) * values.std(ddof=1) / math.sqrt(k)
            else:
                half = np.nan
            row.update({f"mean_{name}": mean, f"{name}_ci_low": mean - half, f"{name}_ci_high": mean + half})
        row["note"] = "" if k >= 2 else "fewer than 2 subjects with a fit: no interval"
        rows.append(row)
    return pd.DataFrame(rows)
