# Shared by the fake Android tools (sourced, POSIX sh). State lives in the fake phone's root:
#   $FAKEROID_ROOT/.fakeroid/props            getprop values, KEY=VALUE per line
#   $FAKEROID_ROOT/.fakeroid/next_uid         the uid the next fresh install gets
#   $FAKEROID_ROOT/.fakeroid/packages/PKG     uid=, version=, apkdir=, installer= of an installed app
#   $FAKEROID_ROOT/.fakeroid/sessions/ID/     APKs written into an install session
#   $FAKEROID_ROOT/.fakeroid/received/ID/     copies of what install-write received (for tests)
#   $FAKEROID_ROOT/.fakeroid/fail/NAME        fault injection: pm-install-commit, pm-uninstall, restorecon
#   $FAKEROID_ROOT/.fakeroid/log              every call with its arguments, one per line
#   $FAKEROID_ROOT/.fakeroid/hooks/TOOL-CMD   a test's script, run with the call's arguments
#                                             before the tool acts (e.g. hooks/pm-install-commit)
set -u
: "${FAKEROID_ROOT:?FAKEROID_ROOT must name the fake phone root}"
R=$FAKEROID_ROOT
S=$R/.fakeroid
mkdir -p "$S/packages" "$S/sessions" "$S/received" "$S/fail"
printf '%s\n' "$FAKEROID_TOOL $*" >> "$S/log"
if [ -x "$S/hooks/$FAKEROID_TOOL-${1:-}" ]; then
    "$S/hooks/$FAKEROID_TOOL-${1:-}" "$@" || exit 1
fi

pkg_field() { # PKG FIELD
    sed -n "s/^$2=//p" "$S/packages/$1" 2>/dev/null | head -n 1
}

prop() {
    sed -n "s/^$1=//p" "$S/props" 2>/dev/null | head -n 1
}

label() { # DIR CONTEXT: set security.selinux when the host can
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import os,sys; os.setxattr(sys.argv[1], "security.selinux", sys.argv[2].encode() + b"\0", follow_symlinks=False)' "$1" "$2" 2>/dev/null || true
    fi
}
