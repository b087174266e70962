# Sourced by bench/run: the repository format (issue 17) against Garage, side by side with
# restic on the same Garage: first snapshot, second unchanged, after 1% of the files change,
# ten phones cloned from one image with 2% data of their own, whole restore, one 1 MiB file.
# Needs what bench/s3.sh needs (it starts the Garage).

# repo_stat LABEL JSON_FILE: the Snapshot counters of the last cpbackup result.
repo_stat() {
    python3 - "$1" "$2" <<'PY' | tee -a "$RESULTS"
import json, sys
label, path = sys.argv[1], sys.argv[2]
try:
    d = json.load(open(path))
except Exception as e:
    print(f"| {label}: no result ({e}) |"); sys.exit(0)
s = d.get("Snapshot", {})
keys = ["Files", "FilesUnchanged", "BytesRead", "BytesUploaded", "BytesDownloaded", "Requests", "ChunksNew", "ChunksReused"]
print(f"| {label} | " + ", ".join(f"{k} {s.get(k, '')}" for k in keys if k in s) + " |")
PY
}

bucket_bytes() { aws s3 ls --recursive --summarize "s3://$GARAGE_BUCKET/$1" | awk '/Total Size/ {print $3}'; }

run_repo() {
    for t in garage restic aws python3; do
        command -v $t >/dev/null || { echo "bench repo needs $t (apt-get install restic awscli; cargo install garage)" >&2; exit 2; }
    done
    start_garage
    mkdir -p "$OUT"
    local repo="s3://$GARAGE_BUCKET/repo/" J=$OUT/repo.json
    local snap="$CPBACKUP export --root $TREE --include /data --to $repo --format repo --json --endpoint $ENDPOINT --instance-id acp-0"
    local clear_repo="aws s3 rm --quiet --recursive s3://$GARAGE_BUCKET/repo/ >/dev/null; rm -rf $CPBACKUP_STATE_DIR/repo"
    local clear_restic="aws s3 rm --quiet --recursive s3://$GARAGE_BUCKET/restic/ >/dev/null; rm -rf ~/.cache/restic; restic init >/dev/null"

    measure "cpbackup export .tar.zst → Garage (the reference)" "" "true" \
        "$CPBACKUP export --root $TREE --include /data --to s3://$GARAGE_BUCKET/cp.tar.zst --endpoint $ENDPOINT"
    measure "cpbackup first snapshot → Garage" "" "$clear_repo" "$snap > $J"
    repo_stat "first snapshot" "$J"
    measure "restic first backup" "" "$clear_restic" "restic backup --quiet $TREE/data"
    measure "cpbackup second snapshot, unchanged" "" "true" "$snap > $J"
    repo_stat "second snapshot" "$J"
    measure "restic second backup, unchanged" "" "true" "restic backup --quiet $TREE/data"

    # 1% of the files change: database pages rewritten, new photos (a copy of the tree, so the
    # benchmark tree stays as generated). The copy is snapshotted once first, untimed: linking
    # it changed every file's ctime, and a phone's next snapshot starts from its own last one.
    local changed=$BENCH_DIR/tree-changed
    rm -rf "$changed"; cp -al "$TREE" "$changed"
    $CPBACKUP export --root "$changed" --include /data --to "$repo" --format repo --json --endpoint "$ENDPOINT" \
        --instance-id acp-0 > "$J"
    python3 - "$changed/data" "$OUT/changed-files" <<'PY'
import os, random, sys
root = sys.argv[1]; rnd = random.Random(17)
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
pick = rnd.sample(files, max(1, len(files) // 100))
for p in pick:
    data = open(p, "rb").read(); os.unlink(p)          # break the hard link to the original
    b = bytearray(data)
    for _ in range(max(1, len(b) // 65536)):
        i = rnd.randrange(0, max(1, len(b) - 4096)); b[i:i + 4096] = rnd.randbytes(min(4096, len(b)))
    open(p, "wb").write(bytes(b))
os.makedirs(os.path.join(root, "media/0/DCIM/Camera"), exist_ok=True)
new = [os.path.join(root, f"media/0/DCIM/Camera/NEW_{i}.jpg") for i in range(2)]
new.append(os.path.join(root, "media/0/DCIM/Camera/ONE_MIB.jpg"))   # the one file restored alone
for p in new:
    open(p, "wb").write(rnd.randbytes(1 << 20 if p.endswith("ONE_MIB.jpg") else 4 << 20))
with open(sys.argv[2], "w") as f:
    f.writelines(p + "\n" for p in pick + new)
print(f"changed {len(pick)} files and added 3 photos", file=sys.stderr)
PY
    # What changed, compressed as a .tar.zst would hold it: the yardstick of the upload.
    local changed_zst; changed_zst=$(tr '\n' '\0' < "$OUT/changed-files" | xargs -0 cat | zstd -3 -q -c | wc -c)
    RUNS=1 measure "cpbackup snapshot after 1% changed" "" "true" \
        "$CPBACKUP export --root $changed --include /data --to $repo --format repo --json --endpoint $ENDPOINT --instance-id acp-0 > $J"
    repo_stat "after 1% changed" "$J"
    echo "| what changed, zstd -3 | $changed_zst bytes |" | tee -a "$RESULTS"

    # Whole restore, and one 1 MiB file.
    local name; name=$(python3 -c "import json; print(json.load(open('$J'))['BackupFileName'])")
    measure "cpbackup import ← .tar.zst in Garage (the reference)" "" "$(fresh $OUT/r1)" \
        "$CPBACKUP import --root $OUT/r1 --from s3://$GARAGE_BUCKET/cp.tar.zst --endpoint $ENDPOINT"
    measure "cpbackup import ← snapshot, whole" "" "$(fresh $OUT/r2)" \
        "$CPBACKUP import --root $OUT/r2 --from ${repo}$name.manifest.json --endpoint $ENDPOINT --json > $J"
    repo_stat "whole restore" "$J"
    measure "restic restore, whole" "" "$(fresh $OUT/r3)" "restic restore --quiet latest --target $OUT/r3"
    local one=data/media/0/DCIM/Camera/ONE_MIB.jpg
    RUNS=1 measure "cpbackup import ← one 1 MiB file (/$one)" "" "$(fresh $OUT/r4)" \
        "$CPBACKUP import --root $OUT/r4 --from ${repo}$name.manifest.json --endpoint $ENDPOINT --json --include /$one > $J"
    repo_stat "one 1 MiB file" "$J"
    cmp "$changed/$one" "$OUT/r4/$one" || { echo "the one file restored differs" >&2; exit 1; }

    # Ten phones cloned from one image, each with 2% data of its own.
    eval "$clear_repo"
    local one_snap total
    for i in $(seq 0 9); do
        local phone=$BENCH_DIR/phone$i
        rm -rf "$phone"; cp -al "$TREE" "$phone"
        python3 -c "
import os, random, sys
r = random.Random($i); d = '$phone/data/media/0/own'; os.makedirs(d, exist_ok=True)
total = int(sys.argv[1]) // 50
for k in range(8): open(f'{d}/own{k}.bin', 'wb').write(r.randbytes(total // 8))" "$TREE_BYTES"
        $CPBACKUP export --root "$phone" --include /data --to "$repo" --format repo --json --endpoint "$ENDPOINT" \
            --instance-id "acp-$i" > "$J"
        [ "$i" = 0 ] && one_snap=$(bucket_bytes repo/)
        rm -rf "$phone"
    done
    total=$(bucket_bytes repo/)
    echo "| ten cloned phones, 2% own data each | repository $total bytes; one phone's snapshot $one_snap bytes; ratio $(echo "scale=2; $total / $one_snap" | bc) |" | tee -a "$RESULTS"
    rm -rf "$changed"
    kill $GARAGE_PID 2>/dev/null || true
}
