#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need when it is missing
# (CRIU's `crit`, from Debian's `criu` package; `chromium` for the report test; `afl++` for the fuzz
# run), builds once, runs every test project, fuzzes the image readers for 30 s (fuzz/afl.sh), and
# ends with one summary line: "tests: N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")"

need_pkgs=()
command -v crit >/dev/null 2>&1 || need_pkgs+=(criu)
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)  # the report test renders its HTML headless
command -v afl-fuzz >/dev/null 2>&1 || need_pkgs+=(afl++)     # fuzz/afl.sh
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
# A short coverage-guided run of the image readers (SharpFuzz + AFL++); a crash fails the suite.
set +e
./fuzz/afl.sh "${CRIU_SHARP_FUZZ_SECONDS:-30}"
frc=$?
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
[ "$rc" -ne 0 ] && exit "$rc"
exit "$frc"
