# Sourced by the bench scripts, after they set OUT (where their outputs go).

# fresh DIR: the setup that gives a restore an empty DIR and a clean page cache. The previous
# restore is moved aside, not deleted, until the end of the run: ext4 skips inodes freed in the
# last minute (five if their table block is still dirty) by scanning past them one at a time, so
# creating 52,000 files right after deleting 52,000 costs every tool over ten seconds of kernel
# time that has nothing to do with it (seen: 14-25 s of system CPU for an import that takes 5 s
# on a fresh filesystem). Then `sync`: the previous tool's dirty pages are not the next one's to
# write (cpbackup's syncfs before its commit would otherwise flush GNU tar's 1.2 GB too).
fresh() { echo "mkdir -p $OUT/old && { [ ! -e $1 ] || mv $1 \$(mktemp -d -p $OUT/old); } && mkdir -p $1 && sync"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# forget_restores DIR...: delete the kept restores at the end of a run, and note when. A run that
# starts within five minutes of that waits first (wait_for_forgotten): it would otherwise create
# its files among inodes ext4 still scans past (see fresh), and its restores would be measured
# on a different filesystem from its exports.
forget_restores() { rm -rf "$@"; date +%s > "$BENCH_DIR/.restores-deleted-at"; }
wait_for_forgotten() {
    local at left
    at=$(cat "$BENCH_DIR/.restores-deleted-at" 2>/dev/null || echo 0)
    left=$(( at + 300 - $(date +%s) ))
    if [ "$left" -gt 0 ]; then
        echo "waiting ${left} s: the last run deleted its restores $(( 300 - left )) s ago" >&2
        sleep "$left"
    fi
}
