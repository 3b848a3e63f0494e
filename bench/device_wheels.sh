#!/usr/bin/env bash
# Download into .whl/ (gitignored) the wheels a bare GPU host lacks for bench/device_check.sh.
#
# The host (the nvidia-h200 image: Python 3.12, torch 2.11, transformers 5.x, peft, accelerate,
# pytest, pillow, safetensors ...) has no pydantic, structlog, diffusers, ftfy or torchao; av is not
# needed (the check encodes no MP4). Run it here, where pip reaches the registry; the device check
# carries .whl/ and installs from it with --no-index. Sizes as downloaded on 2026-12-03 (13 MiB in all):
#   diffusers 0.42.1 6.1M, torchao 0.18.0 3.3M, pydantic-core 2.50.5 2.2M, wcwidth 0.9.4 768K,
#   pydantic 2.14.4 484K, pydantic-settings 2.16.3 84K, structlog 26.1.0 76K, typing-extensions 4.16.0 48K,
#   ftfy 6.3.1 44K, importlib-metadata 10.2.0 36K, python-dotenv 1.2.4 24K, annotated-types 0.8.0 16K,
#   typing-inspection 0.4.5 16K. The host's huggingface-hub (>= 1.32), safetensors (>= 0.8), regex,
#   requests, filelock, numpy and pillow satisfy diffusers' requirements.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WHEELS=(
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 pydantic-settings==2.16.3 python-dotenv==1.2.4 structlog==26.1.0
  diffusers==0.42.1 importlib-metadata==10.2.0 ftfy==6.3.1 wcwidth==0.9.4 torchao==0.18.0
)
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
du -ch .whl/*.whl
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
  echo "device_wheels: $total bytes of wheels, over the 60 MiB budget" >&2
  exit 1
fi
