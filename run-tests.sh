#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need when it is missing
# (CRIU's `crit`, from Debian's `criu` package; `chromium` for the report test), builds once, runs every test
# project, and ends with one summary line: "tests: N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")"

need_pkgs=()
command -v crit >/dev/null 2>&1 || need_pkgs+=(criu)
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)  # the report test renders its HTML headless
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing missing packages: ${need_pkgs[*]}" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

dotnet build criu-sharp.sln -c Release -nologo -v quiet -clp:ErrorsOnly
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
dotnet test criu-sharp.sln -c Release --no-build -nologo -v quiet 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# Sum the per-project result lines into one closing line.
awk '
  /(Passed|Failed)! +- Failed: / {
    for (i = 1; i <= NF; i++) {
      if ($i == "Failed:")  { f += $(i+1) + 0 }
      if ($i == "Passed:")  { p += $(i+1) + 0 }
      if ($i == "Skipped:") { s += $(i+1) + 0 }
    }
  }
  END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }
' "$log"
exit "$rc"
