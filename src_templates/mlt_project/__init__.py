"""mlt-project: image classification with Lightning, versioned with DVC.

The package is laid out by layer; each imports only from the layers above it in this list
(tests/test_layers.py checks it), and none imports anything when the package is imported:

    base/      config, errors, files, logs, the command line, .env, the tasks' numpy half
    data/      raw images -> Parquet splits, and that format (no torch)
    model/     plain torch: networks, tasks' losses and metrics, augmentation, optimizer,
               checkpoints, inference over a split
    training/  Lightning: the module, the DataModule and loaders, callbacks, resume; the train,
               evaluate and lr_find stages
    serve/     the ONNX export and its parity gate, ONNX Runtime, predict (no torch but export)
    deploy/    the cloud behind two seams (an object store, a job runner); aws/ implements them
    release/   the release: export stage, tag, upload, registry
    scripts/   commands only: release, batch, checkpoint_sync, dvc_remote, ...
"""

# The project's name as bootstrap wrote it; S3 keys for releases and DVC data are under it.
PROJECT_NAME = "mlt-project"
