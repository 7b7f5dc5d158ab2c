"""mlt-project: image classification with Lightning, versioned with DVC."""

# The project's name as bootstrap wrote it; S3 keys for releases and DVC data are under it.
PROJECT_NAME = "mlt-project"
