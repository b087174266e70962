# Shared by the fake Android tools (sourced, POSIX sh). State lives in the fake phone's root:
#   $FAKEROID_ROOT/.fakeroid/props            getprop values, KEY=VALUE per line
#   $FAKEROID_ROOT/.fakeroid/next_uid         the app id the next fresh install gets
#   $FAKEROID_ROOT/.fakeroid/packages/PKG     uid= (the app id), version=, apkdir=, installer=,
#                                             users= (the Android users it is installed for),
#                                             requested= (permissions its manifest asks for)
#   $FAKEROID_ROOT/.fakeroid/sessions/ID/     APKs written into an install session (.user: its user)
#   $FAKEROID_ROOT/.fakeroid/received/ID/     copies of what install-write received (for tests)
#   $FAKEROID_ROOT/.fakeroid/perms/USER/PKG   runtime permission state: `PERM true|false FLAG|FLAG` (or `-`)
#   $FAKEROID_ROOT/.fakeroid/appops/USER/PKG  package app-op modes: `OP MODE`
#   $FAKEROID_ROOT/.fakeroid/appops/uid/UID   uid app-op modes: `OP MODE`
#   $FAKEROID_ROOT/.fakeroid/runtime_permissions, restricted_permissions, known_ops
#                                             this Android's runtime permissions, the hard-restricted
#                                             ones among them (granting one does nothing, as on a
#                                             real phone without an exemption) and its app ops, one
#                                             per line; built-in lists when absent
#   $FAKEROID_ROOT/.fakeroid/policy_grants    `PKG PERM` lines: granted by policy at install
#   $FAKEROID_ROOT/.fakeroid/fail/NAME        fault injection: pm-install-commit, pm-uninstall,
#                                             restorecon, pm-set-permission-flags (an older pm)
#   $FAKEROID_ROOT/.fakeroid/log              every call with its arguments, one per line
#   $FAKEROID_ROOT/.fakeroid/hooks/TOOL-CMD   a test's script, run with the call's arguments
#                                             before the tool acts (e.g. hooks/pm-install-commit)
#
# After sourcing, `--user N` has been taken out of the arguments: USER_ID holds N (0 when not
# given), USER_GIVEN is 1 when it was given, ORIG_ARGS holds the arguments as given.
set -u
: "${FAKEROID_ROOT:?FAKEROID_ROOT must name the fake phone root}"
R=$FAKEROID_ROOT
S=$R/.fakeroid
mkdir -p "$S/packages" "$S/sessions" "$S/received" "$S/fail" "$S/perms" "$S/appops/uid"
printf '%s\n' "$FAKEROID_TOOL $*" >> "$S/log"
ORIG_ARGS="$*"

USER_ID=0
USER_GIVEN=0
_n=$#
_next=0
for _a in "$@"; do
    if [ "$_next" = 1 ]; then
        USER_ID=$_a; USER_GIVEN=1; _next=0
    elif [ "$_a" = --user ]; then
        _next=1
    else
        set -- "$@" "$_a"
    fi
done
shift "$_n"
case "$USER_ID" in
    ''|*[!0-9]*) echo "Error: invalid user: $USER_ID" >&2; exit 255 ;;
esac
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

# The package is installed for the user.
installed_for() { # PKG USER
    [ -f "$S/packages/$1" ] || return 1
    case " $(pkg_field "$1" users) " in *" $2 "*) return 0 ;; esac
    return 1
}

# Android's uid of an app in a user: USER * 100000 + app id.
uid_of() { # PKG USER
    echo $(( $2 * 100000 + $(pkg_field "$1" uid) ))
}

# Where the user's data dirs of a package are (user 0's CE dir is /data/data, which
# /data/user/0 links to on a phone).
ce_dir() { # PKG USER
    if [ "$2" = 0 ]; then echo "$R/data/data/$1"; else echo "$R/data/user/$2/$1"; fi
}
de_dir() { # PKG USER
    echo "$R/data/user_de/$2/$1"
}

# Lists, from the state file or the built-in default.
list_of() { # NAME DEFAULT...
    f=$S/$1; shift
    if [ -f "$f" ]; then cat "$f"; else printf '%s\n' "$@"; fi
}
runtime_permissions() {
    list_of runtime_permissions android.permission.CAMERA android.permission.RECORD_AUDIO \
        android.permission.ACCESS_FINE_LOCATION android.permission.ACCESS_COARSE_LOCATION \
        android.permission.ACCESS_BACKGROUND_LOCATION android.permission.READ_CONTACTS \
        android.permission.WRITE_CONTACTS android.permission.READ_CALENDAR android.permission.POST_NOTIFICATIONS \
        android.permission.READ_EXTERNAL_STORAGE android.permission.WRITE_EXTERNAL_STORAGE \
        android.permission.READ_PHONE_STATE android.permission.BODY_SENSORS android.permission.READ_SMS \
        android.permission.SEND_SMS android.permission.READ_CALL_LOG
}
restricted_permissions() {
    list_of restricted_permissions android.permission.READ_SMS android.permission.SEND_SMS android.permission.READ_CALL_LOG
}
known_ops() {
    list_of known_ops COARSE_LOCATION FINE_LOCATION CAMERA RECORD_AUDIO WAKE_LOCK SYSTEM_ALERT_WINDOW \
        WRITE_SETTINGS MANAGE_EXTERNAL_STORAGE RUN_IN_BACKGROUND RUN_ANY_IN_BACKGROUND REQUEST_INSTALL_PACKAGES \
        GET_USAGE_STATS PICTURE_IN_PICTURE SCHEDULE_EXACT_ALARM POST_NOTIFICATION READ_CLIPBOARD
}
in_list() { # WORD (list on stdin)
    grep -qxF -- "$1"
}

# Runtime permission state of PKG in USER: prints `GRANTED FLAGS` (`false -` when never set).
perm_state() { # PKG USER PERM
    line=$(awk -v p="$3" '$1 == p { print $2, $3; exit }' "$S/perms/$2/$1" 2>/dev/null)
    echo "${line:-false -}"
}
perm_set() { # PKG USER PERM GRANTED FLAGS
    mkdir -p "$S/perms/$2"
    f=$S/perms/$2/$1
    { awk -v p="$3" '$1 != p' "$f" 2>/dev/null; echo "$3 $4 $5"; } > "$f.tmp"
    mv "$f.tmp" "$f"
}

# An app-op mode line in a state file.
op_set() { # FILE OP MODE (default removes it)
    mkdir -p "$(dirname "$1")"
    { awk -v o="$2" '$1 != o' "$1" 2>/dev/null; [ "$3" = default ] || echo "$2 $3"; } > "$1.tmp"
    mv "$1.tmp" "$1"
}
