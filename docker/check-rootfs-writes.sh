#!/usr/bin/env bash
# Evidence for the runtime image's read-only root filesystem: runs a real
# `runnel run` (a bounded keyed-window job with file:// checkpoints and a
# stdout sink) under strace, from / with HOME unset-able, and fails if the
# process (or any thread/child) creates, writes, renames or deletes any path
# outside the one directory standing in for a mounted volume.
#
#   docker/check-rootfs-writes.sh [path/to/runnel]
#
# Needs strace (Debian package `strace`). Called by .ci/chart-check when a
# runnel binary and strace are present.
set -euo pipefail
RUNNEL=${1:-target/debug/runnel}
RUNNEL=$(realpath "$RUNNEL")
command -v strace >/dev/null 2>&1 || { echo "check-rootfs-writes: strace is not installed" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
VOL=$WORK/volume
mkdir -p "$VOL"
cat >"$WORK/job.yaml" <<JOB
version: 1
name: rootfs-writes
parallelism: 2
checkpoint: { interval: 200ms, storage: "file://$VOL/checkpoints" }
sources:
  - name: clicks
    generator:
      count: 20000
      ratePerSecond: 10000
      keys: 20
      eventTime: { stepMs: 2 }
      fields:
        user: { key: { prefix: "user-" } }
    watermark: { maxOutOfOrderness: 100ms }
steps:
  - keyBy: "user"
  - name: per-user
    window: { type: tumbling, size: 1s, aggregates: { clicks: { op: count } } }
sinks:
  - name: out
    stdout: {}
JOB
# Bounded input: the job ends by itself after its final checkpoint.
(cd / && HOME=/nonexistent strace -f -qq -o "$WORK/trace" \
    -e trace=openat,open,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,truncate,symlink,symlinkat,link,linkat \
    "$RUNNEL" run "$WORK/job.yaml" --control-addr 127.0.0.1:0 >"$WORK/out" 2>&1) \
    || { cat "$WORK/out" >&2; echo "check-rootfs-writes: runnel run failed" >&2; exit 1; }
[ -n "$(ls "$VOL/checkpoints")" ] || { echo "check-rootfs-writes: no checkpoint was written" >&2; exit 1; }
# Every call that is not a read-only open and did not fail with ENOENT.
writes=$(grep -v 'O_RDONLY' "$WORK/trace" | grep -v '= -1 ENOENT' | grep -v '+++ exited' | grep -v -- '--- SIG' || true)
[ -n "$writes" ] || { echo "check-rootfs-writes: strace saw no write at all (broken trace?)" >&2; exit 1; }
outside=$(grep -o '"[^"]*"' <<<"$writes" | tr -d '"' | grep -v "^$VOL" | sort -u || true)
if [ -n "$outside" ]; then
    echo "check-rootfs-writes: runnel wrote outside its volume:" >&2
    echo "$outside" >&2
    exit 1
fi
echo "ok   runnel run: $(wc -l <<<"$writes") write calls, all under the volume (checkpoint directories: $(find "$VOL/checkpoints" -mindepth 1 -maxdepth 1 | wc -l))"
