#!/usr/bin/env bash
# The GPU check (issue 17): one run of <= 9 minutes on one H200 with no network.
#
#   bash bench/device_check.sh            # on the GPU host (carry .whl/: see bench/device_wheels.sh)
#   bash bench/device_check.sh --dry-run  # anywhere: CPU, tiny shapes, checks the code path (tests/slow)
#
# Installs from .whl/ (with --no-index, into /tmp/videogen-site) whatever the host lacks, then runs
# `python -m bench.device_check`: tests/gpu, the figures (s/step of the 1.3B and the 14B with CFG,
# caches, compile, FP8, tiled VAE), the planner's predictions against them, and writes the measured
# throughput to functions/planner/measured_cost.json (the file the cost model reads). Results go to
# $OUT (the device tool's folder; default .videogen/device_check): device_check.json, .txt, log.txt
# and a copy of measured_cost.json.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-.videogen/device_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

dry=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry=1; done

if [ "$dry" = 0 ]; then
  # what a bare host lacks: a module missing, or diffusers at another version than the one pinned
  missing=$("$PY" - <<'PYEOF'
import importlib.metadata as md
import importlib.util
need = {"pydantic": None, "pydantic_settings": None, "structlog": None, "ftfy": None, "torchao": None,
        "diffusers": "0.42.1"}
out = []
for mod, version in need.items():
    if importlib.util.find_spec(mod) is None:
        out.append(mod)
    elif version is not None and md.version(mod) != version:
        out.append(f"{mod}!={version}")
print(" ".join(out))
PYEOF
)
  if [ -n "$missing" ]; then
    echo "device_check: installing from .whl/ for: $missing"
    if ! ls .whl/*.whl >/dev/null 2>&1; then
      echo "device_check: no wheels in .whl/ (run bench/device_wheels.sh where pip works, carry .whl)" >&2
      exit 3
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/videogen-site .whl/*.whl || exit 3
    export PYTHONPATH="$PWD:/tmp/videogen-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout "${DEVICE_CHECK_TIMEOUT_S:-540}" "$PY" -m bench.device_check --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
