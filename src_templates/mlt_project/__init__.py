"""mlt-project: image classification with Lightning, versioned with DVC."""
