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
