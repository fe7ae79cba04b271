#!/usr/bin/env bash
# Coverage-guided fuzzing of criu-sharp's image readers: SharpFuzz instruments a private copy of
# CriuSharp.ImageFormat.dll and AFL++ drives it (fuzz/ImageFuzz). Bounded by time; exits 1 when
# AFL++ recorded a crash (an input that made a reader throw anything but ImageFormatException),
# and prints the crashing inputs' paths.
#
#   fuzz/afl.sh [SECONDS] [WORKDIR]     default 30 s; WORKDIR keeps the corpus and findings
#
# Installs what it needs when missing: Debian's afl++ and the SharpFuzz.CommandLine dotnet tool.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
work=${2:-$(mktemp -d)}
mkdir -p "$work"

if ! command -v afl-fuzz >/dev/null 2>&1; then
  echo "installing afl++" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends afl++ >/dev/null
fi
tools="$work/tools"
if [ ! -x "$tools/sharpfuzz" ]; then
  dotnet tool install --tool-path "$tools" SharpFuzz.CommandLine --version 2.3.0 >/dev/null
fi

out="$work/bin"
dotnet build fuzz/ImageFuzz -c Release -nologo -v quiet -clp:ErrorsOnly -o "$out" >/dev/null
rm -rf "$work/seeds" "$work/findings"
# Seeds first: the instrumented assembly only runs under AFL++ (it writes AFL's shared coverage map).
dotnet "$out/criu-sharp-imagefuzz.dll" --seeds "$work/seeds"
"$tools/sharpfuzz" "$out/CriuSharp.ImageFormat.dll" >/dev/null

# The target is a managed program, not an afl-cc binary (SharpFuzz supplies the coverage map),
# and this is a bounded check, not a tuned campaign: no CPU binding, no UI, no core-dump setup.
export AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 \
       AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_QUIET=1
set +e
timeout $((secs + 60)) afl-fuzz -V "$secs" -t 10000 -m none -i "$work/seeds" -o "$work/findings" \
  -- dotnet "$out/criu-sharp-imagefuzz.dll" > "$work/afl.log" 2>&1
rc=$?
set -e
stats="$work/findings/default/fuzzer_stats"
if [ ! -f "$stats" ]; then
  echo "fuzz: afl-fuzz did not start (exit $rc); last lines of its log:" >&2
  tail -n 15 "$work/afl.log" >&2
  exit 2
fi
execs=$(awk -F: '/^execs_done/ {gsub(/ /, "", $2); print $2}' "$stats")
paths=$(awk -F: '/^corpus_count/ {gsub(/ /, "", $2); print $2}' "$stats")
crashes=$(find "$work/findings/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
echo "fuzz: ${secs}s of AFL++ on the image readers: $execs executions, $paths inputs in the corpus, $crashes crashes"
if [ "$crashes" -gt 0 ]; then
  find "$work/findings/default/crashes" -type f -name 'id:*' >&2
  echo "reproduce with: dotnet $out/criu-sharp-imagefuzz.dll --replay $work/findings/default/crashes" >&2
  exit 1
fi
