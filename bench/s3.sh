# Sourced by bench/run: the object-storage half of the benchmark. Starts a single-node Garage on
# loopback (its own directory and ports), then runs cpbackup, rclone, restic and aws side by side
# against it. Needs: garage, rclone, restic, aws (Debian: rclone restic awscli).

GARAGE_KEY=GK0b0b0b0b0b0b0b0b0b0b0b0b
GARAGE_SECRET=0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b
GARAGE_BUCKET=bench

start_garage() {
    local dir=$BENCH_DIR/garage
    rm -rf "$dir"; mkdir -p "$dir/meta" "$dir/data"
    GARAGE_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    local rpc=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(printf '%064d' 7)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$GARAGE_PORT"
root_domain = ".s3.garage.localhost"
TOML
    GARAGE="garage -c $dir/garage.toml"
    RUST_LOG=warn $GARAGE server > "$dir/log" 2>&1 &
    GARAGE_PID=$!
    trap 'kill $GARAGE_PID 2>/dev/null || true' EXIT
    for _ in $(seq 100); do $GARAGE status >/dev/null 2>&1 && break; sleep 0.2; done
    local id; id=$($GARAGE node id -q 2>/dev/null | cut -d@ -f1)
    $GARAGE layout assign -z dc1 -c 100G "$id" >/dev/null
    $GARAGE layout apply --version 1 >/dev/null
    $GARAGE key import "$GARAGE_KEY" "$GARAGE_SECRET" -n bench --yes >/dev/null
    $GARAGE bucket create "$GARAGE_BUCKET" >/dev/null
    $GARAGE bucket allow --read --write --owner "$GARAGE_BUCKET" --key "$GARAGE_KEY" >/dev/null
    ENDPOINT=http://127.0.0.1:$GARAGE_PORT
    export AWS_ACCESS_KEY_ID=$GARAGE_KEY AWS_SECRET_ACCESS_KEY=$GARAGE_SECRET AWS_REGION=garage AWS_DEFAULT_REGION=garage
    export AWS_ENDPOINT_URL=$ENDPOINT
    export RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other RCLONE_CONFIG_GARAGE_ENDPOINT=$ENDPOINT \
        RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID=$GARAGE_KEY RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY=$GARAGE_SECRET \
        RCLONE_CONFIG_GARAGE_REGION=garage RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE=true
    export RESTIC_REPOSITORY=s3:$ENDPOINT/$GARAGE_BUCKET/restic RESTIC_PASSWORD=bench
    export CPBACKUP_STATE_DIR=$BENCH_DIR/cpbackup-state
    # A warm-up request so the first timed tool does not pay for Garage's start.
    aws s3 ls "s3://$GARAGE_BUCKET" >/dev/null 2>&1 || true
}

run_s3() {
    for t in garage rclone restic aws; do
        command -v $t >/dev/null || { echo "bench s3 needs $t (apt-get install rclone restic awscli; cargo install garage)" >&2; exit 2; }
    done
    start_garage
    mkdir -p "$OUT"
    [ -f "$OUT/gnu.tar.zst" ] || tar -cf - -C "$TREE" data | zstd -q -3 -T0 > "$OUT/gnu.tar.zst"
    measure "cpbackup export → Garage" "" "true" \
        "$CPBACKUP export --root $TREE --include /data --to s3://$GARAGE_BUCKET/cp.tar.zst --endpoint $ENDPOINT"
    measure "tar | zstd -3 -T0 | rclone rcat" "" "true" \
        "tar -cf - -C $TREE data | zstd -q -3 -T0 | rclone rcat garage:$GARAGE_BUCKET/rc.tar.zst"
    measure "aws s3 cp (compressed file) → Garage" "" "true" \
        "aws s3 cp --only-show-errors $OUT/gnu.tar.zst s3://$GARAGE_BUCKET/aws.tar.zst"
    restic init >/dev/null 2>&1 || true
    measure "restic backup" "" "true" "restic backup --quiet $TREE/data"
    measure "cpbackup import ← Garage" "" "$(fresh $OUT/r1)" \
        "$CPBACKUP import --root $OUT/r1 --from s3://$GARAGE_BUCKET/cp.tar.zst --endpoint $ENDPOINT"
    measure "rclone cat | zstd -d | tar -x" "" "$(fresh $OUT/r2)" \
        "rclone cat garage:$GARAGE_BUCKET/rc.tar.zst | zstd -q -d | tar -x -C $OUT/r2"
    measure "restic restore" "" "$(fresh $OUT/r3)" "restic restore --quiet latest --target $OUT/r3"
    measure "zstd -d < file | tar -x (local)" "" "$(fresh $OUT/r4)" \
        "zstd -q -d < $OUT/gnu.tar.zst | tar -x -C $OUT/r4"
    kill $GARAGE_PID 2>/dev/null || true
}
