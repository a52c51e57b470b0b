#!/usr/bin/env bash
# Rebuilds bench/wheels: what the lent GPU image (CPython 3.12, Linux x86-64; bench/gpu_image_packages.txt)
# lacks for seq2vae, pinned to the versions CI tests. Needs pip access to the package registry.
# DeepSpeed has no wheel on the registry: its sdist is built here into a pure-Python wheel with
# DS_BUILD_OPS=0 (nothing pre-compiled; the smoke's presets JIT-build nothing on CUDA either:
# optimizer.params.torch_adam selects torch's AdamW, not FusedAdam).
set -euo pipefail
cd "$(dirname "$0")"
rm -rf wheels && mkdir wheels
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d wheels \
    pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
    typing_extensions==4.16.0 hjson==3.1.0 webdataset==1.0.2 braceexpand==0.1.7
build=$(mktemp -d)
python -m pip download -q --no-deps --no-binary :all: -d "$build" deepspeed==0.19.8
DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w wheels "$build"/deepspeed-0.19.8.tar.gz
rm -rf "$build"
python gpu_smoke.py --check-wheels
du -sh wheels
