"""Commands, each `python -m mlt_project.scripts.<name>`; what they do lives in the layers."""
