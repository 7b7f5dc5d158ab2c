"""What every layer shares: params.yaml (config.py, schema.py), errors, files, logs, the command
line, `.env`, and the tasks' numpy half (tasks.py). Imports no torch."""
