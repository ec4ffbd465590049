#!/usr/bin/env bash
# Profile the warm read path of the bcachefs-lite daemon: where does its CPU time go when the
# data it serves is already warm (the backing file in the page cache, or the cache file holding
# it when the build has a cache), and every read reaches the daemon (O_DIRECT on the mount)?
#
# perf samples cpu-clock (a software event: works in VMs without hardware counters) with call
# graphs on the daemon's PID; where perf cannot sample, valgrind --tool=callgrind runs the daemon
# instead. Writes bench/results/profile/summary.txt (small; the raw perf.data stays in the temp dir).
# Everything set up here is torn down at the end, also on failure or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/bcachefs-lite}
SECS=${PROFILE_SECS:-10}
OUT=${PROFILE_OUT:-$ROOT/bench/results/profile}
WORK=$(mktemp -d /var/tmp/bcl-profile.XXXXXX)
MNT=$WORK/mnt
DPID=""

cleanup() {
    if grep -q " $MNT fuse" /proc/mounts; then umount "$MNT" || umount -l "$MNT"; fi
    if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
        kill -TERM "$DPID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for p in fio linux-perf valgrind; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="${missing:-} $p"
done
if [ -n "${missing:-}" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi

mkdir -p "$WORK/backing" "$MNT" "$OUT"
head -c 64M /dev/urandom > "$WORK/backing/f"
opts=()
if "$BIN" mount --help | grep -q 'cache='; then
    opts=(-o "cache=$WORK/bcl.cache,cache_size=256M")
    mode="cache"
else
    mode="passthrough (this build has no cache= option)"
fi

use_perf=1
perf record -e cpu-clock -o "$WORK/probe.data" -- true >/dev/null 2>&1 || use_perf=0

if [ "$use_perf" = 1 ]; then
    "$BIN" mount "$WORK/backing" "$MNT" -f "${opts[@]}" 2>"$WORK/daemon.log" &
else
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
        "$BIN" mount "$WORK/backing" "$MNT" -f "${opts[@]}" 2>"$WORK/daemon.log" &
fi
DPID=$!
for _ in $(seq 300); do grep -q " $MNT fuse" /proc/mounts && break; sleep 0.1; done
grep -q " $MNT fuse" /proc/mounts || { cat "$WORK/daemon.log"; exit 1; }

# warm it: the whole file through the mount, twice (fills the cache where there is one)
fio --name=fill --filename="$MNT/f" --rw=randread --bs=128k --direct=1 --ioengine=psync \
    --output=/dev/null
cat "$MNT/f" > /dev/null

fio_cmd=(fio --name=warm --filename="$MNT/f" --rw=randread --bs=4k --direct=1 --numjobs=2
         --ioengine=psync --time_based --runtime="$SECS" --group_reporting --output-format=json)
if [ "$use_perf" = 1 ]; then
    perf record -e cpu-clock -F 2000 -g --call-graph dwarf,16384 -p "$DPID" -o "$WORK/perf.data" \
        -- sleep "$((SECS + 1))" >/dev/null 2>&1 &
    PPID_REC=$!
    sleep 0.5
fi
"${fio_cmd[@]}" > "$WORK/fio.json"
[ "$use_perf" = 1 ] && wait "$PPID_REC"
iops=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"]))' "$WORK/fio.json")

{
    echo "# Warm read path profile of bcachefs-lite ($(date '+%Y-%m-%d %H:%M'))"
    echo "# build: $(git -C "$ROOT" rev-parse --short HEAD), mode: $mode"
    echo "# load: fio 4 KiB random reads, O_DIRECT, 2 jobs, ${SECS} s over a 64 MiB file in the page cache: $iops IOPS"
    if [ "$use_perf" = 1 ]; then
        echo "# perf record -e cpu-clock -g (dwarf) on the daemon; self time per symbol"
        echo
        perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol \
            --percent-limit 0.7 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 || true
        echo
        echo "# by shared object"
        perf report -i "$WORK/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | head -12 || true
        echo
        echo "# with children (inclusive), top entries"
        perf report -i "$WORK/perf.data" --stdio --children --sort symbol -g none \
            --percent-limit 3 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 || true
    fi
} > "$OUT/summary.txt"

umount "$MNT"
for _ in $(seq 100); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
if [ "$use_perf" = 0 ]; then
    callgrind_annotate "$WORK/callgrind.out" 2>/dev/null | head -60 >> "$OUT/summary.txt" || true
fi
DPID=""
cat "$OUT/summary.txt"
