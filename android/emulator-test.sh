#!/usr/bin/env bash
# The round trips of the integration tests, on a real Android: an emulator or a phone that
# `adb devices` lists. Not run in CI (CI has no Android); run it before shipping a build and
# after changing anything under src/android/ or src/net/.
#
#   android/emulator-test.sh                  # local round trips on the device
#   APP=com.example.notes android/emulator-test.sh
#                                             # + backup-app / recover-app of that app
#                                             #   (recover-app REINSTALLS it: use a test app)
#   S3_URL=s3://bucket/prefix/ CPBACKUP_ENDPOINT=https://oss-cn-hangzhou.aliyuncs.com \
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_REGION=cn-hangzhou \
#   CPBACKUP_DNS=223.5.5.5 android/emulator-test.sh
#                                             # + export to object storage and back, from the
#                                             #   device (its DNS and its CA store)
#
# CPBACKUP_BIN picks the binary (default: target/aarch64-unknown-linux-musl/release/cpbackup;
# for an x86_64 emulator build --target x86_64-unknown-linux-musl and point CPBACKUP_BIN at it).
# Exits 0 when every round trip matched, 1 on the first mismatch, 3 when no device is attached.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CPBACKUP_BIN="${CPBACKUP_BIN:-$here/../target/aarch64-unknown-linux-musl/release/cpbackup}"
run="$here/adb-run.sh"
dev=/data/local/tmp/cpbackup
work=/data/local/tmp/cpbackup-test

if ! command -v adb >/dev/null; then
    echo "emulator-test.sh: adb not found; install Android SDK platform-tools. Nothing tested." >&2
    exit 3
fi
if ! adb devices | sed 1d | grep -q $'\tdevice$'; then
    echo "emulator-test.sh: no device attached (adb devices lists none in state 'device')." >&2
    echo "  Start an emulator (emulator -avd <arm64 AVD>) or plug in a phone with USB debugging on," >&2
    echo "  or set ANDROID_SERIAL. Nothing tested." >&2
    exit 3
fi
[ "$(adb devices | sed 1d | grep -c $'\tdevice$')" -eq 1 ] || [ -n "${ANDROID_SERIAL:-}" ] \
    || { echo "emulator-test.sh: several devices attached: set ANDROID_SERIAL" >&2; exit 3; }

step() { printf '\n== %s ==\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
sh_dev() { adb shell "$*" | tr -d '\r'; }
# Root on the device, once: adb root (userdebug, most cloud phones) or su.
if [ "$(sh_dev id -u)" = 0 ] || { adb root >/dev/null 2>&1 && adb wait-for-device && [ "$(sh_dev id -u)" = 0 ]; }; then
    su=""
elif [ "$(sh_dev su 0 id -u 2>/dev/null)" = 0 ]; then
    su="su 0"
else
    fail "no root on the device (no adb root, no su)"
fi
# A listing of a tree on the device: path, type:mode:uid:gid:size, content hash.
cat > "${TMPDIR:-/tmp}/cpbackup-fp.sh" <<'FP'
cd "$1" || exit 1
find . | sort | while read -r p; do
    if [ -f "$p" ] && [ ! -L "$p" ]; then h=$(sha256sum "$p" | cut -d" " -f1); else h=-; fi
    echo "$p $(stat -c %F:%a:%u:%g:%s "$p") $h"
done
FP
adb push "${TMPDIR:-/tmp}/cpbackup-fp.sh" /data/local/tmp/cpbackup-fp.sh >/dev/null
fingerprint() { sh_dev "$su sh /data/local/tmp/cpbackup-fp.sh $1"; }

step "device"
adb shell getprop ro.build.fingerprint
adb shell getprop ro.product.cpu.abi
"$run" push

step "local export -> import under a test root, every format"
sh_dev "rm -rf $work && mkdir -p $work/src/data/media/0/DCIM $work/src/data/data/com.cpb.test/files/sub"
sh_dev "cd $work/src && echo hello > data/data/com.cpb.test/files/a.txt && head -c 3000000 /dev/urandom > data/media/0/DCIM/big.bin \
    && ln -s a.txt data/data/com.cpb.test/files/link && chmod 600 data/data/com.cpb.test/files/a.txt \
    && touch data/data/com.cpb.test/files/sub/empty"
want="$(fingerprint $work/src/data)"
for fmt in tar tar.zst ab; do
    "$run" run export --root $work/src --include /data/data/com.cpb.test --include /data/media/0 \
        --to $work/out.$fmt --json >/dev/null
    sh_dev "rm -rf $work/dst && mkdir -p $work/dst"
    "$run" run import --root $work/dst --from $work/out.$fmt >/dev/null
    got="$(fingerprint $work/dst/data)"
    [ "$want" = "$got" ] || { diff <(echo "$want") <(echo "$got") || true; fail "$fmt round trip differs"; }
    echo "ok: $fmt"
done

step "streamed export over adb exec-out, imported back from this host"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sh_dev "rm -rf $work/stream && mkdir -p $work/stream"
"$run" stream "$work/src/data/media/0" > "$tmp/stream.tar.zst" 2>"$tmp/stream.log" || { cat "$tmp/stream.log"; fail "stream"; }
if command -v zstd >/dev/null; then
    zstd -dc "$tmp/stream.tar.zst" | tar -t >/dev/null || fail "the streamed archive does not read back on the host"
fi
echo "ok: streamed $(wc -c < "$tmp/stream.tar.zst") bytes"

if [ -n "${APP:-}" ]; then
    step "backup-app $APP -> recover-app (the real pm, the real data)"
    "$run" run backup-app --app "$APP" --to $work/app.ab --json >/dev/null
    before="$(fingerprint /data/data/$APP/files 2>/dev/null || true)"
    "$run" run recover-app --from $work/app.ab --json >/dev/null
    sh_dev "pm path $APP" | grep -q '^package:' || fail "$APP not installed after recover-app"
    after="$(fingerprint /data/data/$APP/files 2>/dev/null || true)"
    [ "$before" = "$after" ] || fail "$APP's files differ after recover-app"
    echo "ok: $APP"
fi

if [ -n "${S3_URL:-}" ]; then
    step "object storage from the device: $S3_URL"
    key="${S3_URL%/}/emulator-test-$(date +%s).tar.zst"
    "$run" run export --root $work/src --include /data/media/0 --to "$key" --json >/dev/null
    sh_dev "rm -rf $work/dst && mkdir -p $work/dst"
    "$run" run import --root $work/dst --from "$key" >/dev/null
    [ "$(fingerprint $work/src/data/media)" = "$(fingerprint $work/dst/data/media)" ] || fail "object storage round trip differs"
    echo "ok: $key"
fi

sh_dev "rm -rf $work $dev.log /data/local/tmp/cpbackup-fp.sh"
echo
echo "all round trips matched on $(adb shell getprop ro.product.model | tr -d '\r')"
