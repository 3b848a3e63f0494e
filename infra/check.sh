#!/usr/bin/env bash
# Static checks of the deployment code (no terraform binary needed):
#   1. generated files are up to date with schemas/   (infra/tools/gen_infra.py --check)
#   2. every `#checkov:skip=` carries a written justification
#   3. checkov on infra/, zero failed checks           (its own virtualenv: checkov pins boto3 & co.)
# The hcl2 parse and the name/limit cross-check against schemas/ run in pytest
# (tests/unit/test_infra.py). Idempotent; with .venv-checkov present it takes ~30 s.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
VENV=.venv-checkov
PY=${PYTHON:-python3}

# ---- 1. generated files ------------------------------------------------------------------------
if [ -x .venv/bin/python ]; then
  .venv/bin/python infra/tools/gen_infra.py --check
else
  echo "infra/check.sh: .venv missing (run scripts/setup); skipping the generated-files check" >&2
fi

# ---- 2. justified skips ------------------------------------------------------------------------
# form: #checkov:skip=CKV_ID:<reason of at least 30 characters>
unjustified=$(grep -rnE 'checkov:skip' infra/ --include='*.tf' --include='*.yaml' --include='*.yml' --include='*.json' \
  | grep -vE '#checkov:skip=CKV2?_[A-Z0-9]+_[0-9]+:.{30,}$' || true)
if [ -n "$unjustified" ]; then
  echo "infra/check.sh: checkov skips without a justification (write '#checkov:skip=CKV_ID:<why>'):" >&2
  echo "$unjustified" >&2
  exit 1
fi

# ---- 3. checkov --------------------------------------------------------------------------------
if ! "$VENV/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  echo "infra/check.sh: installing checkov $CHECKOV_VERSION into $VENV" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rc=0
# --skip-download: offline (no Prisma Cloud guideline download); exit code 1 on any failed check
"$VENV/bin/checkov" -d infra/ --quiet --compact --skip-download \
  --output cli --output json --output-file-path "console,$out/checkov.json" || rc=$?

"$VENV/bin/python" - "$out/checkov.json" <<'PY'
import json, pathlib, sys
report = pathlib.Path(sys.argv[1])
if not report.is_file():
    sys.exit("infra/check.sh: checkov wrote no JSON report")
data = json.loads(report.read_text())
reports = data if isinstance(data, list) else [data]
totals = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0}
for r in reports:
    for k in totals:
        totals[k] += int(r.get("summary", {}).get(k, 0))
print("checkov summary - " + " ".join(f"{k}={v}" for k, v in totals.items()))
sys.exit(1 if totals["failed"] or totals["parsing_errors"] else 0)
PY
echo "justified skips (a check skipped in a module counts once per environment that calls it):"
grep -rhoE '#checkov:skip=CKV2?_[A-Z0-9]+_[0-9]+:.*' infra/ | sed -E 's/^#checkov:skip=/  /' | sort -u
exit "$rc"
