"""AWS behind deploy/'s seams: S3 as the object store (s3.py), Batch as the job runner
(batch.py), Batch's multi-node variables (cluster.py), and the settings, client and errors
(settings.py)."""
