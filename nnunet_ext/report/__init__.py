"""Study reports: per-axon morphometrics summarised per image, subject and group, binned by axon diameter, with
subject-level group statistics, mixed models, figures and one self-contained HTML page (``nnunet-ext report``).

This package reads per-axon tables (CSV or XLSX, in this package's or AxonDeepSeg's column layout); it does not
measure images. Modules, by job:

inputs
    find the tables, read them with their units, name subjects (BIDS entities or folders), attach groups and
    covariates from ``participants.tsv`` / ``samples.tsv`` or a named table.
filters
    g-ratio validity, border-touching axons, diameter limits, with per-image counts of what was dropped.
binning
    diameter bins (AxonDeepSeg's, user edges, quantiles) and AxonDeepSeg's per-subject binned statistics table.
summaries
    per image, subject and group summaries (count, mean/median/SD, aggregate g-ratio, axon density).
statistics
    subject-level group tests with effect sizes, linear mixed models (statsmodels), g-ratio vs diameter fits.
figures, html
    PNG figures (matplotlib) and the self-contained ``report.html``.
workflow
    :func:`~nnunet_ext.report.workflow.run_report`, what the command runs.

Importing this package is cheap (no pandas): ``nnunet-ext --help`` imports :mod:`nnunet_ext.report.cli`.
"""
