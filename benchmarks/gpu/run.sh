#!/usr/bin/env bash
# The GPU benchmark on the device machine, from the repository root, in one go:
# install the carried wheels (benchmarks/gpu/_carry/wheels, filled by prepare.sh) and
# the project itself with --no-deps (nothing can be fetched there), then run run.py.
# Arguments go to run.py (e.g. --budget-scale 0.5 for a shorter rerun).
set -uo pipefail
site=/tmp/wsi-mil-site
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$site" benchmarks/gpu/_carry/wheels/*.whl || exit 3
if python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
  --target "$site/project" .; then
  export PYTHONPATH="$site/project:$site"
else  # an older setuptools in the image cannot build it: use the tree as it is
  echo "note: pip could not install the project; importing it from src/"
  export PYTHONPATH="$PWD/src:$site"
fi
python3 -c "import napari_wsi_mil, torch; print(napari_wsi_mil.__file__, torch.__version__)"
exec python3 benchmarks/gpu/run.py "$@"
