#!/usr/bin/env bash
# Quick start: install, build, check the host, then remote-fork a real running
# program through the default pool (/dev/shm/cxlfork.pool): checkpoint it while
# it runs, restore two zero-copy clones, show that they continue, clean up.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v crit >/dev/null 2>&1 || missing+=(criu python3-protobuf)
command -v chromium >/dev/null 2>&1 || missing+=(chromium) # for the test of bench's HTML report
if ((${#missing[@]})); then apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; fi
[ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error
npm run --silent build

cxlfork() { node bin/run.js "$@"; }
cxlfork check

work=$(mktemp -d /tmp/cxlfork-quickstart.XXXXXX)
clones=()
cleanup() {
  for pid in "${clones[@]}" ${target:-}; do kill -TERM "$pid" 2>/dev/null || true; done
  cxlfork rm quickstart --force >/dev/null 2>&1 || true
  sleep 0.3; cxlfork pool gc >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

gcc -O1 -o "$work/memtouch" fixtures/memtouch.c
# The workload: 64 MiB of patterned memory, a heap, a private file mapping, a log fd it appends to.
(cd "$work" && exec setsid ./memtouch "$work/log" --mib 64 </dev/null >/dev/null 2>&1 &)
for _ in $(seq 50); do grep -q READY "$work/log" 2>/dev/null && break; sleep 0.1; done
target=$(grep -o 'READY pid=[0-9]*' "$work/log" | cut -d= -f2)
echo "== workload running as pid $target"

cxlfork rm quickstart >/dev/null 2>&1 || true
cxlfork checkpoint "$target" --name quickstart
for i in 1 2; do
  pid=$(cxlfork restore quickstart --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
  clones+=("$pid")
  echo "== clone $i runs as pid $pid"
done
sleep 0.5
for pid in "${clones[@]}"; do kill -USR1 "$pid"; done
sleep 1
echo "== the original and both clones keep appending to the same log (note the pids):"
grep -E "CHECK|TICK" "$work/log" | tail -6
for pid in "${clones[@]}"; do
  grep -q "CHECK pid=$pid ok=1" "$work/log" || { echo "clone $pid failed its self-check"; exit 1; }
  echo "== clone $pid: memory checksum OK; local memory $(grep RssAnon /proc/$pid/status | tr -s ' ')"
done
cxlfork ls
echo "== quickstart passed"
