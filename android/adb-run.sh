#!/usr/bin/env bash
# Push the cpbackup binary to a phone or emulator over adb and run it by hand.
#
#   android/adb-run.sh push                          # copy the binary, print `cpbackup version`
#   android/adb-run.sh run export --include /data/data/com.example.app --to /sdcard/app.tar.zst
#   android/adb-run.sh stream /data/data/com.example.app > app.tar.zst   # archive to this host
#   android/adb-run.sh restore app.tar.zst           # the reverse: archive from this host
#
# Environment:
#   CPBACKUP_BIN   the binary to push (default: the release build for aarch64-unknown-linux-musl)
#   ANDROID_SERIAL which device, when several are attached (adb's own variable)
#   CPBACKUP_DNS   name servers for the agent instead of netd's, passed through
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, CPBACKUP_ENDPOINT: passed through for
#                  exports to object storage
#
# Runs the agent as root: through `adb root` when the image allows it (userdebug, most cloud
# phones), else through `su`. The binary goes to /data/local/tmp, the one place shell can write
# and execute.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${CPBACKUP_BIN:-$here/../target/aarch64-unknown-linux-musl/release/cpbackup}"
dev=/data/local/tmp/cpbackup

die() { echo "adb-run.sh: $*" >&2; exit 1; }
command -v adb >/dev/null || die "adb not found (Android SDK platform-tools)"
[ "$(adb get-state 2>/dev/null || true)" = device ] || die "no device attached (adb devices lists none in state 'device')"

# How to run a command as root on the device: "" when adb's shell is root already.
as_root() {
    if [ "$(adb shell id -u | tr -d '\r')" = 0 ]; then
        echo ""
    elif adb root >/dev/null 2>&1 && adb wait-for-device && [ "$(adb shell id -u | tr -d '\r')" = 0 ]; then
        echo ""
    elif [ "$(adb shell su 0 id -u 2>/dev/null | tr -d '\r')" = 0 ]; then
        echo "su 0"
    else
        die "cannot get root on the device (no adb root, no su): the agent needs root to read app data"
    fi
}

# The environment the agent should see, as `VAR=value` words for the remote shell.
passenv() {
    local v out=""
    for v in CPBACKUP_DNS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_REGION CPBACKUP_ENDPOINT RUST_LOG; do
        [ -n "${!v:-}" ] && out+="$v='${!v}' "
    done
    echo "$out"
}

push() {
    [ -f "$bin" ] || die "$bin not built: cargo build --release --target aarch64-unknown-linux-musl"
    local abi
    abi="$(adb shell getprop ro.product.cpu.abi | tr -d '\r')"
    [ "$abi" = arm64-v8a ] || echo "adb-run.sh: warning: the device's ABI is $abi, the binary is aarch64" >&2
    adb push "$bin" "$dev" >/dev/null
    adb shell chmod 755 "$dev"
    adb shell "$dev" version
}

cmd="${1:-}"
shift || true
case "$cmd" in
    push)
        push
        ;;
    run)
        push >/dev/null
        su="$(as_root)"
        adb shell "$su env $(passenv) $dev $*"
        ;;
    stream)
        # adb exec-out: no pty, so the archive arrives byte for byte. The agent's messages go
        # to a log on the device (exec-out would mix them into the archive) and are shown after.
        [ $# -ge 1 ] || die "usage: adb-run.sh stream DEVICE_PATH... > archive.tar.zst"
        push >/dev/null
        su="$(as_root)"
        includes=""
        for p in "$@"; do includes+="--include '$p' "; done
        adb exec-out "$su env $(passenv) $dev export $includes --format tar.zst --to - 2>$dev.log"
        adb shell cat "$dev.log" >&2
        ;;
    restore)
        [ $# -eq 1 ] && [ -f "$1" ] || die "usage: adb-run.sh restore archive.tar.zst"
        push >/dev/null
        su="$(as_root)"
        # Same file name on the device: the format comes from the extension.
        remote="/data/local/tmp/$(basename "$1")"
        adb push "$1" "$remote" >/dev/null
        adb shell "$su $dev import --from '$remote'; rm -f '$remote'"
        ;;
    *)
        sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
