"""The release: the export stage (export.py), its version, tag and checksummed upload (version.py,
tag.py, upload.py), all of it in order (publish.py), promotion to a stage against the version there
(promote.py, recorded by stages.py), and the git and DVC commands they run; and the git and DVC
side of a sweep on AWS Batch (sweep.py, and each array child: sweep_child.py)."""
