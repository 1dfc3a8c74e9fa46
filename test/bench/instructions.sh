#!/usr/bin/env bash
# Instructions per request of a proxy, counted by valgrind's callgrind: the same figure run after
# run whatever else the machine does (unlike CPU time on a shared VM), so a change to the hot path
# can be judged by it. It counts instructions, not cycles: cache misses do not show (see
# test/bench/README.md, "Third pass").
#
#   test/bench/instructions.sh breakwater [config.yaml]   # dist/cli.js (npm run build first)
#   test/bench/instructions.sh forwarder                  # test/bench/peer-undici.mjs
#
# Starts test/bench/upstream.mjs and the proxy under callgrind (instrumentation off), warms the
# proxy up with WARM requests (default 10000; V8 must be done optimizing the request path, or its
# compiler's work is counted too), counts COUNT requests (default 3000), and prints instructions
# per request. All on 127.0.0.1; every process it starts is stopped by its PID. Takes 1-2 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in valgrind callgrind_control; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is not installed (Debian: apt-get install valgrind)"; exit 0; }
done
WHAT=${1:?usage: instructions.sh breakwater [config.yaml] | forwarder}
WARM=${WARM:-10000}
COUNT=${COUNT:-3000}
UP_PORT=${UP_PORT:-18960}
PORT=${PORT:-18961}
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
node test/bench/upstream.mjs --port "$UP_PORT" >/dev/null & PIDS+=($!)
if [ "$WHAT" = forwarder ]; then
  cmd=(node test/bench/peer-undici.mjs --port "$PORT" --upstream "http://127.0.0.1:$UP_PORT")
else
  conf=${2:-$DIR/breakwater.yaml}
  if [ -z "${2:-}" ]; then
    cat > "$conf" <<YAML
listeners:
  - name: bench
    host: 127.0.0.1
    port: $PORT
    routes:
      - name: all
        upstream: backend
upstreams:
  backend:
    endpoints: [http://127.0.0.1:$UP_PORT]
    retry: { max_attempts: 3 }
    circuit_breaker: { failure_threshold: 1000000, failure_rate_threshold: 99%, slow_call_duration: 10s, slow_call_rate_threshold: 99% }
    rate_limiter: { max_requests_per_second: 10000000, burst_limit: 10000000 }
    bulkhead: { max_concurrent: 100000 }
logging: { level: info, access_log: false }
YAML
  fi
  cmd=(node --max-semi-space-size=8 --v8-pool-size=1 dist/cli.js --config "$conf")
fi
valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.out" --dump-instr=no --instr-atstart=no "${cmd[@]}" \
  >"$DIR/proxy.log" 2>&1 & PIDS+=($!)
VG=$!
for _ in $(seq 180); do
  sleep 1
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
done
load() { node node_modules/autocannon/autocannon.js -c 10 -a "$1" "http://127.0.0.1:$PORT/" >/dev/null 2>&1; }
load "$WARM"
callgrind_control -z "$VG" >/dev/null 2>&1
callgrind_control -i on "$VG" >/dev/null 2>&1
load "$COUNT"
callgrind_control -d "$VG" >/dev/null 2>&1
callgrind_control -i off "$VG" >/dev/null 2>&1
sleep 1
total=$(grep -h '^totals:' "$DIR"/cg.out* | tail -1 | awk '{print $2}')
echo "$WHAT: $total instructions over $COUNT requests: $((total / COUNT)) per request"
