#!/usr/bin/env bash
# An iterative (pre-copy) migration scripted the way CRIU users script P.Haul-like loops: separate
# spawn, run, pre-dump, dump and restore commands on two machine directories (source and
# destination), deciding when to stop from each pre-dump's --json stats with P.Haul's rule
# (p.haul phaul/iters.py): stop when a pre-dump wrote <= 64 pages, grew more than 10 % over the
# previous one (integer percent), or after iteration index 8.
#
#   bash samples/migrate.sh [WORKLOAD]          (from the repository root; default samples/hotcold.json)
#
# Environment:
#   CRIU_SHARP   the command to run (default: build src/Cli once, then `dotnet <its criu-sharp.dll>`,
#                which starts much faster than `dotnet run` on every step)
#   WORK         working directory for the machines and images (default: a new temporary directory)
#   BANDWIDTH    link bandwidth in bytes/s for the modelled transfer of each image set (default 128 MiB/s)
#   WARMUP       virtual time the workload runs before the first pre-dump (default 200ms)
set -euo pipefail

workload=${1:-samples/hotcold.json}
bandwidth=${BANDWIDTH:-134217728}
warmup=${WARMUP:-200ms}
work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/criu-sharp-migrate.XXXXXX")}
src="$work/source" dst="$work/dest" img="$work/img"
mkdir -p "$img"

if [ -n "${CRIU_SHARP:-}" ]; then
  read -r -a C <<<"$CRIU_SHARP"
else
  dotnet build src/Cli -nologo -v quiet -clp:ErrorsOnly >&2
  C=(dotnet artifacts/bin/Cli/debug/criu-sharp.dll)
fi
c() { "${C[@]}" "$@"; }

# One number from a --json answer (the CLI prints indented JSON: one "name": value per line).
field() { grep -o "\"$1\": [0-9]*" | head -n1 | grep -o '[0-9]*$'; }

pid=$(c spawn "$workload" --machine "$src" | awk '{print $1}')
echo "source: spawned $pid from $workload; warming up for $warmup"
c run --for "$warmup" --machine "$src" >/dev/null

i=1 prev=
while true; do
  parent=()
  [ "$i" -gt 1 ] && parent=(--prev-images-dir "../$((i - 1))")
  stats=$(c pre-dump -t "$pid" -D "$img/$i" "${parent[@]}" --machine "$src" --json)
  written=$(field pages_written <<<"$stats")
  skipped=$(field pages_skipped_parent <<<"$stats")
  sent=$(du -sb --exclude=parent "$img/$i" | cut -f1)
  echo "pre-dump $i: $written pages written, $skipped in parent, $sent bytes to send"

  # The workload keeps running while the images cross the link.
  transfer_ns=$(( sent * 1000000000 / bandwidth ))
  c run --for "${transfer_ns}ns" --machine "$src" >/dev/null

  # P.Haul's __check_live_iter_progress, in its order. Bash's integer division truncates where
  # Python 2 floors; they differ only for shrinking dumps, which never exceed the 10 % limit.
  index=$((i - 1))
  if [ "$written" -le 64 ]; then echo "stop: small dump ($written <= 64 pages)"; break; fi
  if [ -n "$prev" ]; then
    grow=$(( (written - prev) * 100 / prev ))
    if [ "$grow" -gt 10 ]; then echo "stop: iteration grows ($grow% > 10%)"; break; fi
  fi
  if [ "$index" -ge 8 ]; then echo "stop: too many iterations (index $index >= 8)"; break; fi
  prev=$written
  i=$((i + 1))
done

final=$((i + 1))
stats=$(c dump -t "$pid" -D "$img/$final" --prev-images-dir "../$i" --track-mem --machine "$src" --json)
echo "dump $final: $(field pages_written <<<"$stats") pages written, $(field pages_skipped_parent <<<"$stats") in parent, frozen $(( $(field frozen_time_ns <<<"$stats") / 1000 )) us"
src_uptime=$(c run --for 0ns --machine "$src" --json | field uptime_ns)

c restore -D "$img/$final" --machine "$dst" >/dev/null
echo "destination: restored $pid"
c verify --machine "$dst"

# The workload's schedule is absolute virtual time: the destination's clock first catches up with
# the source's, then the restored workload runs on for 100 ms and checks itself again.
dst_uptime=$(c run --for 0ns --machine "$dst" --json | field uptime_ns)
catch_up=$(( src_uptime > dst_uptime ? src_uptime - dst_uptime : 0 ))
c run --for "$(( catch_up + 100000000 ))ns" --machine "$dst" >/dev/null
c verify --machine "$dst"
echo "migrated: $((final - 1)) pre-dumps + final dump; images in $img"
