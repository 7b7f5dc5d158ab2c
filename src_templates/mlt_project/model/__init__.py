"""The model: networks by name (nets.py), the one params.yaml names built (build.py), batch
augmentation (augment.py) and the LightningModule (classifier.py).

Nothing is imported here: evaluation and export load networks without importing Lightning.
"""
