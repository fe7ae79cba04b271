# Shared by the recording scripts: find the criu-sharp command, start a program, record it with
# `criu-sharp record --machine /proc`, then stop the program the script itself started.
#
# Environment (all optional):
#   CRIU_SHARP   the command to run (default: build src/Cli once, then `dotnet <its criu-sharp.dll>`)
#   OUT          the trace directory to create (default: traces/NAME-<date> under the repository)
#   INTERVAL     time between samples (default 50ms)
#   FOR          recording length (default 10s)
#   WARMUP       seconds the program runs before the first sample (default 1)
#   TRACKER      pre-dump tracker on the host (default auto; the host kernel has no soft-dirty)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
if [ -n "${CRIU_SHARP:-}" ]; then
  read -r -a C <<<"$CRIU_SHARP"
else
  dotnet build src/Cli -c Release -nologo -v quiet -clp:ErrorsOnly >&2
  C=(dotnet artifacts/bin/Cli/release/criu-sharp.dll)
fi

# record_program NAME -- COMMAND...: starts COMMAND in the background, records it, stops it.
record_program() {
  local name=$1; shift; [ "$1" = "--" ] && shift
  local out=${OUT:-$repo/traces/$name-$(date -u +%Y%m%dT%H%M%SZ)}
  mkdir -p "$(dirname "$out")"
  "$@" &
  local pid=$!
  # The program is ours: stop it however the recording ends.
  trap 'kill '"$pid"' 2>/dev/null || true; wait '"$pid"' 2>/dev/null || true' EXIT
  sleep "${WARMUP:-1}"
  echo "recording $name (pid $pid) into $out" >&2
  "${C[@]}" record -t "$pid" --machine /proc --interval "${INTERVAL:-50ms}" --for "${FOR:-10s}" \
    --tracker "${TRACKER:-auto}" -o "$out" "${RECORD_ARGS[@]}"
}
RECORD_ARGS=()
