"""The model: networks by name (nets.py), the one params.yaml names built (build.py), batch
augmentation (augment.py, mix.py), the loss, metrics and thresholds of each data.task
(objective.py), running a network over a split (inference.py), the weights' average (ema.py) and
the LightningModule (classifier.py).

Nothing is imported here: evaluation and export load networks without importing Lightning.
"""
