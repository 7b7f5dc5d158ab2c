#!/usr/bin/env bash
# The serving image's entrypoint (Dockerfile.serve); it runs the same way from a project checkout.
#   serve [FLAGS]   the model server on 0.0.0.0:8080 (SageMaker runs `docker run IMAGE serve`;
#                   give ECS and Kubernetes the same command). FLAGS go to
#                   `python -m mlt_project.serve`: --stage production, --release s3://..., ...;
#                   without, the model is MODEL_STAGE's (the environment), else /opt/ml/model.
#   anything else   run as given (`docker run IMAGE python -m mlt_project.serve.predict ...`).
# exec: the server is PID 1 and gets SIGTERM itself: it finishes the requests in flight and
# exits 0.
set -euo pipefail

if [ "${1:-}" = "serve" ]; then
    shift
    exec python -m mlt_project.serve --host 0.0.0.0 --port "${PORT:-8080}" "$@"
fi
exec "$@"
