#!/usr/bin/env bash
# Fill benchmarks/gpu/_carry (git-ignored; name it in `run`'s carry) with what the GPU
# machine lacks: wheels for its Python 3.12 (it has no network) and the labelled tiles.
# Run from the repository root, on a machine with PyPI access:
#   bash benchmarks/gpu/prepare.sh [TILES_DIR]   (default ../shared/data/tiles-labelled)
# The image has torch, torchvision, tifffile, scikit-image, scikit-learn, h5py,
# safetensors, pillow, scipy, pyyaml, msgpack; napari_wsi_mil's benchmark path also
# imports zarr (with numcodecs, donfig, google-crc32c) and imagecodecs (JPEG tiles);
# tifffile comes too, at the version tested here with zarr 3.
# The project itself is installed from the tree with --no-deps (run.sh).
set -euo pipefail
carry=benchmarks/gpu/_carry
tiles=${1:-${WSI_MIL_SHARED:-../shared/data}/tiles-labelled}
rm -rf "$carry/wheels" && mkdir -p "$carry/wheels"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$carry/wheels" \
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 imagecodecs==2026.3.6 \
  tifffile==2026.3.3
rm -rf "$carry/tiles" && cp -r "$tiles" "$carry/tiles"
du -sh "$carry"/*
