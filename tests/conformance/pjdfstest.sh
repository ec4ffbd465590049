#!/usr/bin/env bash
# make pjdfstest: the POSIX conformance suite (the Rust port of pjdfstest, crate `pjdfstest`)
# run as root through a bcachefs-lite mount with a cache, and on a plain directory of the
# filesystem under /tmp (ext4 here) for comparison. Prints both summaries side by side and
# every failing test case, and exits non-zero when the mount fails a case that is neither
# failing on the plain directory too nor listed in tests/conformance/known-failures.txt.
#
# Everything lives in one temporary directory; on exit (also on failure or Ctrl-C) the script
# lazily unmounts only the mount it made and ends only the daemon it started, by its PID.
#
# Environment: BIN (the daemon, default target/debug/bcachefs-lite), PJDFSTEST (the runner,
# default: `pjdfstest` in PATH or ~/.cargo/bin), PJD_OPTIONS (extra -o options for the
# mount), PJD_LOGS (where the logs are kept, default target/pjdfstest), PJD_FILTER (test name
# patterns, e.g. "chmod open"; default: all).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$(readlink -f "${BIN:-target/debug/bcachefs-lite}")
PJDFSTEST=${PJDFSTEST:-$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")}
LOGS=${PJD_LOGS:-target/pjdfstest}
KNOWN=$HERE/known-failures.txt
read -r -a FILTER <<<"${PJD_FILTER:-}"

[ "$(id -u)" = 0 ] || { echo "pjdfstest.sh: needs root (it switches users and chowns)"; exit 1; }
[ -e /dev/fuse ] || { echo "pjdfstest.sh: no /dev/fuse"; exit 1; }
[ -x "$BIN" ] || { echo "pjdfstest.sh: $BIN: not built"; exit 1; }
[ -x "$PJDFSTEST" ] || { echo "pjdfstest.sh: $PJDFSTEST: not installed (cargo install pjdfstest)"; exit 1; }

mkdir -p "$LOGS"
LOGS=$(readlink -f "$LOGS")
WORK=$(mktemp -d /tmp/bcl-pjdfstest.XXXXXX)
chmod 0755 "$WORK" # the suite's dummy users must reach the mount point
BACKING=$WORK/backing
MNT=$WORK/mnt
PLAIN=$WORK/plain
mkdir -p "$BACKING" "$MNT" "$PLAIN" "$WORK/ssd"
PID=""

is_mounted() { awk -v m="$MNT" '$5 == m && / - fuse\.bcachefs-lite / { f = 1 } END { exit !f }' /proc/self/mountinfo; }

cleanup() {
    set +e
    if is_mounted; then
        umount "$MNT" 2>/dev/null || umount -l "$MNT"
    fi
    if [ -n "$PID" ]; then
        for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$PID" 2>/dev/null && kill "$PID"
        wait "$PID" 2>/dev/null
    fi
    # only once nothing is mounted under it
    is_mounted || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The suite's two dummy users: nobody and one more unprivileged account that exists here.
group_of() { getent group "$(id -g "$1")" | cut -d: -f1; }
second=tests
id -u "$second" >/dev/null 2>&1 || second=daemon
cat >"$WORK/pjdfstest.toml" <<EOF
[features]
posix_fallocate = {}
utimensat = {}
utime_now = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "$(group_of nobody)"], ["$second", "$(group_of "$second")"]]
EOF

# The secondary filesystem for the EXDEV cases: tmpfs, distinct from both runs.
SECONDARY=$(mktemp -d /dev/shm/bcl-pjdfstest.XXXXXX)
trap 'rm -rf "$SECONDARY"; cleanup' EXIT

run_suite() { # NAME DIR
    local log=$LOGS/$1.log
    echo "== pjdfstest on $1 ($2)"
    local start=$SECONDS
    NO_COLOR=1 "$PJDFSTEST" -c "$WORK/pjdfstest.toml" -p "$2" -s "$SECONDARY" "${FILTER[@]}" \
        >"$log" 2>&1 || true
    echo "   $((SECONDS - start)) s, log: $log"
}

"$BIN" mount "$BACKING" "$MNT" -f \
    -o "cache=$WORK/ssd/pjd.cache,cache_size=64M,allow_other,default_permissions${PJD_OPTIONS:+,$PJD_OPTIONS}" \
    >"$LOGS/daemon.log" 2>&1 </dev/null &
PID=$!
for _ in $(seq 200); do
    is_mounted && break
    kill -0 "$PID" 2>/dev/null || { echo "the daemon exited before mounting:"; cat "$LOGS/daemon.log"; exit 1; }
    sleep 0.05
done
is_mounted || { echo "the mount did not appear"; exit 1; }

run_suite mount "$MNT"
run_suite plain "$PLAIN"

# "Summary: F failed, S skipped, P passed, E expected failures, T total"
summary() { grep -a '^Summary' "$LOGS/$1.log" | tail -n 1 | sed 's/^Summary: //'; }
count() { summary "$1" | grep -o "[0-9]* $2" | cut -d' ' -f1; }
failures() { { grep -a ' FAILED$' "$LOGS/$1.log" || true; } | awk '{ print $1 }' | sort -u; }
for run in mount plain; do
    [ -n "$(summary $run)" ] || { echo "no summary in $LOGS/$run.log:"; tail -n 20 "$LOGS/$run.log"; exit 1; }
done

echo
printf '%-28s %8s %8s %8s %8s\n' "pjdfstest (test cases)" passed failed skipped total
printf '%-28s %8s %8s %8s %8s\n' "bcachefs-lite, with cache" \
    "$(count mount passed)" "$(count mount failed)" "$(count mount skipped)" "$(count mount total)"
printf '%-28s %8s %8s %8s %8s\n' "plain directory (/tmp)" \
    "$(count plain passed)" "$(count plain failed)" "$(count plain skipped)" "$(count plain total)"

failures mount >"$WORK/mount.fail"
failures plain >"$WORK/plain.fail"
grep -v '^\s*\(#\|$\)' "$KNOWN" 2>/dev/null | awk '{ print $1 }' | sort -u >"$WORK/known" || true
echo
list() { local l; l=$(xargs); echo "${l:-none}"; }
echo "failing on both:                 $(comm -12 "$WORK/mount.fail" "$WORK/plain.fail" | list)"
echo "failing on the mount, known:     $(comm -23 "$WORK/mount.fail" "$WORK/plain.fail" | comm -12 - "$WORK/known" | list)"
unexpected=$(comm -23 "$WORK/mount.fail" "$WORK/plain.fail" | comm -23 - "$WORK/known" | xargs)
echo "failing on the mount only, NEW:  ${unexpected:-none}"
echo "failing on the plain dir only:   $(comm -13 "$WORK/mount.fail" "$WORK/plain.fail" | list)"
[ -z "$unexpected" ]
