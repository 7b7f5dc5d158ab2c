"""Networks (nets.py, network.py), augmentation (augment.py) and the LightningModule (classifier.py).

Nothing is imported here: evaluation and export load networks without importing Lightning.
"""
