#!/usr/bin/env bash
# Bake a throwaway project, install it, run its pipeline on the sample digits and print the
# metrics. Run through `make demo`, which provides the Python environment. The project goes
# outside this repository (bootstrap refuses a target inside the template): $DEMO_DIR, or
# ml-aws-template-demo in the temporary folder.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
demo="${DEMO_DIR:-${TMPDIR:-/tmp}/ml-aws-template-demo}"

if [ -e "$demo" ] && [ ! -f "$demo/.ml-template.json" ]; then
    echo "demo: $demo exists and is not a demo project; remove it or set DEMO_DIR" >&2
    exit 1
fi
rm -rf "$demo"
mkdir -p "$demo"
git -C "$demo" init --quiet
python3 "$repo/bootstrap.py" --target "$demo" --name digits-demo --torch cpu
pip install --quiet --no-build-isolation -e "$demo"

cd "$demo"
python -m digits_demo.data.sample_data
time dvc repro
dvc metrics show
echo "The project is in $demo"
