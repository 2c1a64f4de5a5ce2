"""The generalist-versus-dedicated experiment of AxonDeepSeg's multi-domain aggregation study, on nnU-Net datasets.

Given several converted source datasets (nnU-Net raw datasets with a test set), the experiment

1. uses every training source as the dataset of one *dedicated* model, and aggregates the training sources into one
   dataset for the *generalist* model (test sets unioned, folds that validate on every source);
2. writes the exact nnU-Net commands that plan, train and predict (``commands.sh``), or runs them;
3. predicts every source's test set (``imagesTs``) with every model and scores it against ``labelsTs``;
4. assembles a Dice matrix per class (rows: target test sets, columns: models), drawn as heat maps; the paired
   t-test of generalist versus dedicated on in-domain pairs; and an out-of-distribution table for sources held out
   of every training.

Modules
-------
design
    The datasets and nnU-Net settings of an experiment (``experiment.json``); ``prepare_experiment`` resolves the
    sources and creates the generalist's aggregated dataset.
nnunet_runs
    The nnU-Net commands of ``commands.sh``, and running them here (``--run``).
scoring
    Every model's predictions on every test set, evaluated against the references.
comparison
    Pure functions on tables: the Dice matrix, the paired t-test, the out-of-distribution table (and their
    definitions).
outputs
    The experiment folder: plan, whole run, result tables and heat maps, text summary.
cli
    ``nnunet-ext experiment`` (argparse only at import time).
"""
