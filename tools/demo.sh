#!/usr/bin/env bash
# Bake a throwaway project into ./demo, install it, run its pipeline on the sample digits and
# print the metrics. Run through `make demo`, which provides the Python environment.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
demo="$repo/demo"

rm -rf "$demo"
mkdir -p "$demo"
git -C "$demo" init --quiet
python3 "$repo/bootstrap.py" --target "$demo" --name digits-demo --torch cpu
pip install --quiet --no-build-isolation -e "$demo"

cd "$demo"
python -m digits_demo.data.sample_data
time dvc repro
dvc metrics show
