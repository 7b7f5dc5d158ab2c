"""Networks (nets.py, network.py), augmentation (augment.py, mix.py), the loss (loss.py), the
weights' average (ema.py) and the LightningModule (classifier.py).

Nothing is imported here: evaluation and export load networks without importing Lightning.
"""
