"""Lightning: the LightningModule (module.py), the DataModule and its loaders (datamodule.py,
stream.py, resumable.py), the factories that build them and every callback (factories.py,
callbacks.py, resume.py), and the stages: train.py, evaluate.py (no Lightning), lr_find.py."""
