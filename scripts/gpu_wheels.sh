#!/usr/bin/env bash
# Download the wheels the GPU machine's image lacks into .whl/ (ignored by git), for the device tool's
# `carry`. The image has torch, transformers, peft, safetensors, huggingface_hub, pillow, numpy, scipy,
# regex, click, tqdm, jinja2; it lacks diffusers, torchsde (+ trampoline), importlib_metadata, platformdirs.
# See docs/benchmarks.md ("GPU check") for the command to run there.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.42.1 torchsde==0.2.6 trampoline==0.1.2 importlib_metadata==8.7.0 platformdirs==4.3.8
ls -l .whl
