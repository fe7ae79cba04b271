#!/usr/bin/env bash
# A post-copy migration between two network namespaces joined by a veth pair, optionally shaped
# with tc tbf: the source namespace runs `dump --lazy-pages` (which serves the lazy pages with
# PS_IOV_GET), the destination namespace runs `restore --lazy-pages` and the `lazy-pages` daemon,
# which fetches every page over the veth link. Root is needed (ip netns). Everything it creates is
# named with a random suffix and removed on exit, even on failure; it says what it created.
#
#   sudo bash samples/netns-migrate.sh [RATE [BURST]]    e.g. 100mbit 32kbit (no RATE: unshaped link)
#
# With TRANSPORT=migrate it runs one `migrate --transport tcp` instead: `migrate-service` in the
# destination namespace, `migrate --address --port` in the source namespace (pages through the
# destination's page servers; for hybrid/postcopy the destination fetches the lazy pages from the
# source's page server), with the transfer measured on the veth link.
#
# Environment:
#   CRIU_SHARP   the command to run (default: build src/Cli once, then `dotnet <its criu-sharp.dll>`)
#   WORK         working directory for the machines and images (default: a new temporary directory)
#   WORKLOAD     workload file (default: a 4 MiB hot/cold process written into WORK)
#   TIMEOUT      seconds each network step may take (default 60)
#   TRANSPORT    lazy (default: dump --lazy-pages, restore --lazy-pages, lazy-pages) or migrate
#   MODE         migrate's --mode with TRANSPORT=migrate: precopy, postcopy or hybrid (default)
#   POLICY       migrate's --policy with TRANSPORT=migrate (default fixed:2)
set -euo pipefail

rate=${1:-} burst=${2:-32kbit}
timeout_s=${TIMEOUT:-60}
own_work=
if [ -z "${WORK:-}" ]; then own_work=1; fi
work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/criu-sharp-netns.XXXXXX")}
mkdir -p "$work"
suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
ns_src="cs-src-$suffix" ns_dst="cs-dst-$suffix" veth_src="vs$suffix" veth_dst="vd$suffix"
# A /30 of 10.0.0.0/8 picked at random, so concurrent runs do not collide.
net="10.$((RANDOM % 250 + 1)).$((RANDOM % 250 + 1))"
addr_src="$net.1" addr_dst="$net.2"
dump_pid= service_pid=

cleanup() {
  [ -n "$dump_pid" ] && kill "$dump_pid" 2>/dev/null || true
  [ -n "$service_pid" ] && kill "$service_pid" 2>/dev/null || true
  ip netns del "$ns_src" 2>/dev/null || true
  ip netns del "$ns_dst" 2>/dev/null || true
  echo "removed network namespaces $ns_src and $ns_dst (and the veth pair with them)"
  if [ -n "$own_work" ]; then rm -rf "$work"; echo "removed $work"; fi
}
trap cleanup EXIT

if [ -n "${CRIU_SHARP:-}" ]; then
  read -r -a C <<<"$CRIU_SHARP"
else
  dotnet build src/Cli -c Release -nologo -v quiet -clp:ErrorsOnly >&2
  C=(dotnet artifacts/bin/Cli/release/criu-sharp.dll)
fi
c() { "${C[@]}" "$@"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" timeout "$timeout_s" "${C[@]}" "$@"; }

ip netns add "$ns_src"
ip netns add "$ns_dst"
ip link add "$veth_src" type veth peer name "$veth_dst"
ip link set "$veth_src" netns "$ns_src"
ip link set "$veth_dst" netns "$ns_dst"
ip -n "$ns_src" addr add "$addr_src/30" dev "$veth_src"
ip -n "$ns_dst" addr add "$addr_dst/30" dev "$veth_dst"
for ns in "$ns_src" "$ns_dst"; do ip -n "$ns" link set lo up; done
ip -n "$ns_src" link set "$veth_src" up
ip -n "$ns_dst" link set "$veth_dst" up
shaped="unshaped"
if [ -n "$rate" ]; then
  # Shape what the source sends (the pages): token bucket of RATE with BURST.
  ip netns exec "$ns_src" tc qdisc add dev "$veth_src" root tbf rate "$rate" burst "$burst" latency 100ms
  shaped="tbf rate $rate burst $burst"
fi
echo "created network namespaces $ns_src ($addr_src) and $ns_dst ($addr_dst), veth $veth_src-$veth_dst, $shaped"

workload=${WORKLOAD:-}
if [ -z "$workload" ]; then
  workload="$work/hotcold.json"
  cat >"$workload" <<'JSON'
{ "seed": 7, "processes": [ { "name": "hc",
    "mappings": [ { "name": "heap", "size": "4MiB" } ],
    "behaviour": { "type": "hotcold", "mapping": "heap", "exponent": 1.1, "pages_per_second": 20000, "prefill": true } } ] }
JSON
fi

# Waits for "listening on ADDR:PORT" in FILE from background process PID; prints PORT.
wait_port() {
  local file=$1 addr=$2 pid=$3 errfile=$4 port=
  for _ in $(seq 1 $((timeout_s * 5))); do
    port=$(grep -o "listening on $addr:[0-9]*" "$file" 2>/dev/null | cut -d: -f2 || true)
    [ -n "$port" ] && { echo "$port"; return 0; }
    kill -0 "$pid" 2>/dev/null || { cat "$errfile" >&2; return 1; }
    sleep 0.2
  done
  echo "no 'listening on $addr' within ${timeout_s}s" >&2
  return 1
}

if [ "${TRANSPORT:-lazy}" = migrate ]; then
  # As migrate does for the service it starts itself: loops compiled optimised during the
  # warm-up, not recompiled by on-stack replacement inside the measured restore.
  DOTNET_TC_QuickJitForLoops=0 in_ns "$ns_dst" migrate-service -D "$work/dst-images" --machine "$work/dst" --address "$addr_dst" --port 0 --ps-timeout "$timeout_s" \
    >"$work/service.out" 2>"$work/service.err" &
  service_pid=$!
  port=$(wait_port "$work/service.out" "$addr_dst" "$service_pid" "$work/service.err")
  echo "destination: migrate-service listening on $addr_dst:$port"
  in_ns "$ns_src" migrate -w "$workload" --transport tcp --address "$addr_dst" --port "$port" \
    --mode "${MODE:-hybrid}" --policy "${POLICY:-fixed:2}" --ps-timeout "$timeout_s"
  wait "$service_pid"
  service_pid=
  echo "destination: migrate-service finished; the restored tree is in $work/dst"
  c verify --machine "$work/dst"
  exit 0
fi

pid=$(c spawn "$workload" --machine "$work/src" | awk '{print $1; exit}')
c run --for 50ms --machine "$work/src" >/dev/null
echo "source: spawned $pid from $workload"

in_ns "$ns_src" dump -t "$pid" --machine "$work/src" -D "$work/img" --lazy-pages --address "$addr_src" --port 0 --ps-timeout "$timeout_s" >"$work/dump.out" 2>"$work/dump.err" &
dump_pid=$!
port=
for _ in $(seq 1 $((timeout_s * 5))); do
  port=$(grep -o "listening on $addr_src:[0-9]*" "$work/dump.out" 2>/dev/null | cut -d: -f2 || true)
  [ -n "$port" ] && break
  kill -0 "$dump_pid" 2>/dev/null || { cat "$work/dump.err" >&2; exit 1; }
  sleep 0.2
done
[ -n "$port" ] || { echo "dump --lazy-pages did not listen within ${timeout_s}s" >&2; exit 1; }
echo "source: dumped lazily, serving pages on $addr_src:$port"

c restore --machine "$work/dst" -D "$work/img" --lazy-pages
start=$(date +%s%N)
in_ns "$ns_dst" lazy-pages --machine "$work/dst" -D "$work/img" --page-server --address "$addr_src" --port "$port" --ps-timeout "$timeout_s"
end=$(date +%s%N)
wait "$dump_pid"
dump_pid=
cat "$work/dump.out" | tail -n 1
echo "destination: every lazy page arrived over the veth link in $(( (end - start) / 1000000 )) ms (wall clock, $shaped)"
c verify --machine "$work/dst"
