"""Plain PyTorch: networks by name (nets.py) and built (build.py), the tasks' losses and metrics
(tasks.py), batch augmentation and mixing (augment.py, mix.py), the optimizer (optim.py), the
weights' average (ema.py), checkpoints read as data (checkpoint.py, tensor_files.py) and a
network over a split (inference.py).

Nothing is imported here, and nothing here imports Lightning: evaluation and export load
networks without it.
"""
