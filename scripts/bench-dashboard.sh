#!/usr/bin/env bash
# What watching the dashboard costs the gateway. On the example `mlp`, one
# quiver-bench closed-loop run each (same duration, same connections):
#   1. nobody watching;
#   2. a script polling /dashboard/api/v1/state every 2 s, whole (the page
#      asks for new samples only, so this is more than a page costs the
#      gateway);
#   3. a headless Chromium showing /dashboard (adds the browser's CPU on the
#      same machine);
#   4. nobody watching again: the two unwatched runs show the run-to-run
#      noise, and the ratios are to their mean.
# Also the page's weight: the bytes of the page, its CSS and JS, and one
# state document. Prints a Markdown report and writes it to
# bench/results/dashboard/dashboard.md.
#
#   cargo build --release -p quiver-gateway -p quiver-bench
#   scripts/bench-dashboard.sh            # DURATION=20 CONNECTIONS=32 by default
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
export ORT_DYLIB_PATH
BIN="${CARGO_TARGET_DIR:-target}/release"
DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-32}"
OUT=bench/results/dashboard
mkdir -p "$OUT"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/repo"
cp -r examples/models/mlp "$work/repo/"
QUIVER_LOG__DIR="$work/log" "$BIN/quiver-gateway" --model-repository "$work/repo" \
    --http-addr 127.0.0.1:0 2>"$work/gateway.log" &
pids+=($!)
for _ in $(seq 300); do
    addr="$(grep -o 'listening on http://[0-9.:]*' "$work/gateway.log" | head -1 | sed 's#.*http://##')" || true
    [[ -n "${addr:-}" ]] && curl -sf "http://$addr/v2/health/ready" >/dev/null && break
    sleep 0.1
done
url="http://$addr"

# CPU seconds used so far by process $1 and its descendants.
cpu_of() {
    python3 - "$1" <<'PY'
import os, sys
stats = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        stats[int(pid)] = (int(f[1]), int(f[11]) + int(f[12]))
    except OSError:
        pass
tree, total = {int(sys.argv[1])}, 0
for _ in range(8):
    tree |= {p for p, (pp, _) in stats.items() if pp in tree}
total = sum(stats[p][1] for p in tree if p in stats)
print(f"{total / os.sysconf('SC_CLK_TCK'):.1f}")
PY
}

bench() {
    "$BIN/quiver-bench" run --url "$url" --model mlp --closed --connections "$CONNECTIONS" \
        --duration "$DURATION" --warmup 3 --label "$1" --out "$work/$1.json" >/dev/null 2>&1
    python3 -c "import json,sys; p=json.load(open(sys.argv[1]))['points'][0]; print(p['achieved_rps'], p['latency']['p99_us'])" "$work/$1.json"
}

read -r alone alone_p99 < <(bench alone)

( while true; do curl -s -o /dev/null "$url/dashboard/api/v1/state"; sleep 2; done ) &
poller=$!
pids+=($poller)
read -r polled polled_p99 < <(bench polled)
kill "$poller"

chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --user-data-dir="$work/chromium" --remote-debugging-port=0 "$url/dashboard" 2>/dev/null &
pids+=($!)
sleep 3
browser=${pids[-1]}
browser_before=$(cpu_of "$browser")
read -r watched watched_p99 < <(bench watched)
browser_after=$(cpu_of "$browser")
browser_cpu=$(python3 -c "print(f'{$browser_after - $browser_before:.1f}')")
kill "${pids[-1]}"
sleep 1
read -r again again_p99 < <(bench again)
load="$(cut -d' ' -f1-3 /proc/loadavg)"

size() { curl -s -o /dev/null -w '%{size_download}' "$url$1"; }
html=$(size /dashboard); css=$(size /dashboard/app.css); js=$(size /dashboard/app.js)
state=$(size /dashboard/api/v1/state)
# The state document's answer time, idle, median of 21.
answer_ms=$(for _ in $(seq 21); do curl -s -o /dev/null -w '%{time_total}\n' "$url/dashboard/api/v1/state"; done \
    | sort -n | sed -n 11p | awk '{ printf "%.2f", $1 * 1000 }')
samples=$(curl -s "$url/dashboard/api/v1/state" | python3 -c "import json,sys; d=json.load(sys.stdin); print(max(len(v['series']['t_ms']) for m in d['models'] for v in m['versions']))")

report="$(python3 - "$alone" "$polled" "$watched" "$alone_p99" "$polled_p99" "$watched_p99" \
    "$html" "$css" "$js" "$state" "$samples" "$DURATION" "$CONNECTIONS" "$(nproc)" "$answer_ms" \
    "$again" "$again_p99" "$load" "$browser_cpu" <<'PY'
import sys
a, p, w, ap, pp, wp = map(float, sys.argv[1:7])
html, css, js, state, samples, dur, conns, cpus, answer_ms = sys.argv[7:16]
a2, a2p = map(float, sys.argv[16:18])
load, browser_cpu = sys.argv[18], float(sys.argv[19])
base = (a + a2) / 2
print(f"""# What the dashboard costs

`scripts/bench-dashboard.sh` on the example `mlp` (release build, {cpus} CPUs,
gateway, load generator and browser on the same machine; load average
{load} at the end): `quiver-bench run --closed --connections {conns}
--duration {dur}`, one run each, in this order.

| watching | throughput (req/s) | ratio to the unwatched mean | p99 (ms) |
|---|---:|---:|---:|
| nobody | {a:,.0f} | {a/base:.3f} | {ap/1000:.2f} |
| a script polling the whole state JSON every 2 s | {p:,.0f} | {p/base:.3f} | {pp/1000:.2f} |
| headless Chromium showing /dashboard | {w:,.0f} | {w/base:.3f} | {wp/1000:.2f} |
| nobody, again | {a2:,.0f} | {a2/base:.3f} | {a2p/1000:.2f} |

During its run (about {float(dur) + 3:.0f} s with warm-up) Chromium itself used
{browser_cpu:.1f} CPU-seconds of the machine's {cpus}.

Page weight: HTML {int(html):,} B, CSS {int(css):,} B, JS {int(js):,} B
(together {int(html)+int(css)+int(js):,} B, uncompressed, nothing else fetched);
one state document {int(state):,} B with {samples} samples per version (it grows
to 900 samples, 15 minutes, per version), answered in {answer_ms} ms (median of
21 requests after the runs, curl on loopback).""")
PY
)"
echo "$report" | tee "$OUT/dashboard.md"
