#!/usr/bin/env bash
# Packaging check (root, Debian): build the .deb, check what it holds, install it for real,
# send one message through the installed /usr/sbin/sendmail to a Postfix of the interop suite,
# then purge it and check what purge removed and kept.
#
# The real install happens in a copy-on-write overlay of this machine's own root file system
# (its dpkg database, its packages), entered with chroot in a private mount namespace: apt
# resolves m365send's Conflicts there exactly as on the host, removing Postfix or any other MTA
# (mail-transport-agent) -- there only. The host keeps its Postfix, which the interop suite
# needs, and the Postfix instance this script starts from the interop suite's helpers keeps
# running on 127.0.0.1 to receive the message. Nothing on the host is changed but the
# temporary directories (removed at the end) and, when missing, packages (man-db, and those
# the interop suite installs).
#
# Usage: tests/packaging/run.sh [DEB]   (without DEB, scripts/build-deb.sh builds one)
# Exits 0 when every check passed, 1 when one failed, 2 when the harness could not be set up.
# The last line is `packaging: N passed, N failed`. See tests/packaging/README.md.
set -euo pipefail

# A private mount namespace: the overlay and its bind mounts vanish with this script.
if [[ -z ${M365SEND_PKG_NS:-} ]]; then
    exec unshare --mount --propagation private env M365SEND_PKG_NS=1 bash "$0" "$@"
fi

PKG_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PKG_ROOT=$(cd "$PKG_HERE/../.." && pwd)
cd "$PKG_ROOT"
DEB=${1:-}

# The interop suite's helpers: packages, work directory and cleanup, PKI, Postfix instance B
# ("MX endpoint"), find_mail/envelope_from/envelope_rcpts/header_of.
# shellcheck source=../interop/run.sh
source "$PKG_ROOT/tests/interop/run.sh"

PASSED=0
FAILED_CHECKS=()
note() { printf 'packaging: %s\n' "$*" >&2; }
pkg_die() {
    note "FATAL: $*"
    exit 2
}
# check NAME COMMAND...: run a check, print PASS/FAIL, count it.
check() {
    local name=$1
    shift
    local out
    if out=$("$@" 2>&1); then
        printf 'packaging: %-48s PASS\n' "$name"
        PASSED=$((PASSED + 1))
    else
        printf 'packaging: %-48s FAIL\n' "$name"
        [[ -n $out ]] && printf '%s\n' "$out" | head -20 | sed 's/^/    /'
        FAILED_CHECKS+=("$name")
    fi
}
# expect WHAT EXPECTED GOT
expect() {
    [[ $2 == "$3" ]] || {
        echo "$1: expected '$2', got '$3'"
        return 1
    }
}

STARTED=$SECONDS
[[ $(id -u) == 0 ]] || pkg_die "run as root (it installs packages and mounts an overlay)"

# ---------------------------------------------------------------------------------------------
# Build

if [[ -z $DEB ]]; then
    note "building the package (scripts/build-deb.sh)"
    t0=$SECONDS
    build_log=$(mktemp /tmp/m365send-build-deb.XXXXXX)
    bash scripts/build-deb.sh >"$build_log" 2>&1 || {
        tail -30 "$build_log" >&2
        pkg_die "scripts/build-deb.sh failed (log: $build_log)"
    }
    DEB=$(tail -1 "$build_log")
    rm -f "$build_log"
    note "built $DEB in $((SECONDS - t0))s"
fi
[[ -f $DEB ]] || pkg_die "no package: $DEB"
DEB=$(cd "$(dirname "$DEB")" && pwd)/$(basename "$DEB")
VERSION=$(dpkg-deb -f "$DEB" Version)
note "package $DEB ($(stat -c %s "$DEB") bytes, version $VERSION)"

# ---------------------------------------------------------------------------------------------
# What the .deb holds

LISTING=$(dpkg-deb -c "$DEB")
# mode owner path [-> target] for one entry of the listing (owner as uid/gid: 0/0 is root).
entry() {
    awk -v p="./$1" '$6 == p { sub("^root/root$", "0/0", $2); print $1, $2, ($7 == "->" ? $8 : "") }' <<<"$LISTING"
}
has_file() { # PATH MODE
    expect "./$1" "-$2 0/0 " "$(entry "$1")"
}
has_link() { # PATH TARGET
    expect "./$1" "lrwxrwxrwx 0/0 $2" "$(entry "$1")"
}
field_has() { # FIELD WORD
    local v
    v=$(dpkg-deb -f "$DEB" "$1")
    [[ ", $v," == *", $2"[\ ,]* ]] || {
        echo "$1: '$v' lacks $2"
        return 1
    }
}
control_file() { dpkg-deb --ctrl-tarfile "$DEB" | tar -xO "./$1"; }
inert_config() {
    local active
    active=$(dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./etc/m365send/config.toml | grep -v -E '^[[:space:]]*(#|$)' || true)
    [[ -z $active ]] || {
        echo "active lines: $active"
        return 1
    }
}
scripts_are_posix() {
    local s
    for s in postinst postrm; do
        control_file "$s" >"/tmp/m365send-$s"
        head -1 "/tmp/m365send-$s" | grep -qx '#!/bin/sh' || {
            echo "$s: not #!/bin/sh"
            return 1
        }
        dash -n "/tmp/m365send-$s" || return 1
        ! grep -n 'DEBHELPER' "/tmp/m365send-$s" || {
            echo "$s: #DEBHELPER# left in"
            return 1
        }
        rm -f "/tmp/m365send-$s"
    done
}

check "deb: Provides mail-transport-agent" field_has Provides mail-transport-agent
check "deb: Conflicts mail-transport-agent" field_has Conflicts mail-transport-agent
check "deb: Replaces mail-transport-agent" field_has Replaces mail-transport-agent
check "deb: Depends on libc6" field_has Depends libc6
check "deb: /usr/bin/m365send 0755" has_file usr/bin/m365send rwxr-xr-x
check "deb: /usr/sbin/sendmail link" has_link usr/sbin/sendmail ../bin/m365send
check "deb: /usr/lib/sendmail link" has_link usr/lib/sendmail ../sbin/sendmail
check "deb: /usr/bin/mailq link" has_link usr/bin/mailq m365send
check "deb: /usr/bin/newaliases link" has_link usr/bin/newaliases m365send
check "deb: m365send(8)" has_file usr/share/man/man8/m365send.8.gz rw-r--r--
check "deb: m365send.toml(5)" has_file usr/share/man/man5/m365send.toml.5.gz rw-r--r--
check "deb: sendmail(8) link" has_link usr/share/man/man8/sendmail.8.gz m365send.8.gz
check "deb: mailq(8) link" has_link usr/share/man/man8/mailq.8.gz m365send.8.gz
check "deb: newaliases(8) link" has_link usr/share/man/man8/newaliases.8.gz m365send.8.gz
check "deb: bash completion" has_file usr/share/bash-completion/completions/m365send rw-r--r--
check "deb: zsh completion" has_file usr/share/zsh/vendor-completions/_m365send rw-r--r--
check "deb: fish completion" has_file usr/share/fish/vendor_completions.d/m365send.fish rw-r--r--
check "deb: /etc/m365send/config.toml 0644" has_file etc/m365send/config.toml rw-r--r--
check "deb: config.toml is a conffile" bash -c "dpkg-deb --ctrl-tarfile '$DEB' | tar -xO ./conffiles | grep -qx /etc/m365send/config.toml"
check "deb: config.toml sets nothing (no secret)" inert_config
check "deb: queue service unit" has_file usr/lib/systemd/system/m365send-queue.service rw-r--r--
check "deb: queue timer unit" has_file usr/lib/systemd/system/m365send-queue.timer rw-r--r--
check "deb: serve service unit" has_file usr/lib/systemd/system/m365send-serve.service rw-r--r--
check "deb: serve socket unit" has_file usr/lib/systemd/system/m365send-serve.socket rw-r--r--
check "deb: no unit enabled by the package" bash -c "! grep -q 'wants/' <<<\"\$1\"" _ "$LISTING"
check "deb: postinst/postrm are POSIX sh" scripts_are_posix

# ---------------------------------------------------------------------------------------------
# A Postfix from the interop suite: instance B, the "MX endpoint" (certificate connector).

command -v man >/dev/null 2>&1 && dpkg-query -W -f='${Status}' man-db 2>/dev/null | grep -q 'ok installed' || {
    note "installing man-db"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends man-db >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends man-db >/dev/null; } ||
        pkg_die "cannot install man-db"
}
TMPDIR_APT_LOG=$(mktemp /tmp/m365send-pkg-apt.XXXXXX)
install_packages
rm -f "$TMPDIR_APT_LOG"
HOST_MTA=$(dpkg-query -W -f='${binary:Package} ${Status}\n' 2>/dev/null | awk '$NF == "installed" { print $1 }' |
    while read -r p; do
        dpkg-query -W -f='${Provides}\n' "$p" | grep -q 'mail-transport-agent' && echo "$p"
    done | head -1 || true)
HOST_SENDMAIL=$(readlink -f /usr/sbin/sendmail 2>/dev/null || true)

setup_workdir
PORT_MX=$(free_port)
make_pki
write_capture
setup_postfix_mx
start_postfix B "$PORT_MX"

# ---------------------------------------------------------------------------------------------
# The overlay: this machine's root, copy-on-write, in our private mount namespace.

OV=$(mktemp -d /tmp/m365send-pkg.XXXXXX)
R=$OV/root
overlay_down() {
    set +e
    umount -R "$R" 2>/dev/null || umount -l -R "$R" 2>/dev/null
    umount "$OV/lower" 2>/dev/null || umount -l "$OV/lower" 2>/dev/null
    umount "$OV" 2>/dev/null || umount -l "$OV" 2>/dev/null
    rmdir "$OV" 2>/dev/null
}
# The interop cleanup (stop Postfix, remove its work directory) after ours, with the exit code.
trap 'rc=$?; overlay_down; (exit $rc); cleanup' EXIT
mount -t tmpfs -o mode=0700 m365send-pkg "$OV"
mkdir -p "$OV/lower" "$OV/upper" "$OV/work" "$R"
mount --bind / "$OV/lower"
mount -t overlay overlay -o "lowerdir=$OV/lower,upperdir=$OV/upper,workdir=$OV/work" "$R" ||
    pkg_die "cannot mount an overlay of / (needs root and overlayfs)"
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount --bind "$W" "$R$W" # the PKI the installed m365send is configured with
# No service is started by any maintainer script in there.
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
chmod 0755 "$R/usr/sbin/policy-rc.d"
cp "$DEB" "$R/tmp/m365send.deb"

in_root() {
    chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive MANWIDTH=80 "$@"
}
# stat in the overlay: mode owner group type
rstat() { stat -c '%a %U %G %F' "$R$1"; }
gone() { # PATH...
    local p
    for p in "$@"; do
        if [[ -e $R$p || -L $R$p ]]; then
            echo "$p is still there"
            return 1
        fi
    done
}

# ---------------------------------------------------------------------------------------------
# Install for real (apt: conflicting MTAs are removed, in the overlay)

t0=$SECONDS
check "install with apt (conflicting MTA ${HOST_MTA:-none} removed)" \
    in_root apt-get install -y -q --no-install-recommends /tmp/m365send.deb
note "installed in $((SECONDS - t0))s"
check "m365send is installed" bash -c "chroot '$R' dpkg-query -W -f='\${Status}' m365send | grep -qx 'install ok installed'"
if [[ -n $HOST_MTA ]]; then
    check "$HOST_MTA was removed (in the overlay)" \
        bash -c "! chroot '$R' dpkg-query -W -f='\${Status}' '$HOST_MTA' 2>/dev/null | grep -q 'ok installed'"
fi

check "m365send --version" bash -c "chroot '$R' /usr/bin/m365send --version | grep -qx 'm365send ${VERSION%%-*}'"
check "/usr/bin/m365send: 755 root" expect mode "755 root root regular file" "$(rstat /usr/bin/m365send)"
for link in /usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq /usr/bin/newaliases; do
    check "$link runs m365send" expect "$link" /usr/bin/m365send "$(chroot "$R" readlink -f "$link")"
done
check "/etc/m365send/config.toml: 644 root, conffile" bash -c "
    [[ \$(stat -c '%a %U %G' '$R/etc/m365send/config.toml') == '644 root root' ]] &&
    chroot '$R' dpkg-query -W -f='\${Conffiles}' m365send | grep -q '/etc/m365send/config.toml '"
for dir in /var/spool/m365send /var/cache/m365send; do
    check "$dir: 700 root directory" expect "$dir" "700 root root directory" "$(rstat "$dir")"
done
check "queue units installed" expect units "644 root root regular file 644 root root regular file" \
    "$(rstat /usr/lib/systemd/system/m365send-queue.service) $(rstat /usr/lib/systemd/system/m365send-queue.timer)"
not_enabled() {
    local links state
    links=$(find "$R/etc/systemd/system" -name 'm365send*' 2>/dev/null)
    [[ -z $links ]] || {
        echo "enabled: $links"
        return 1
    }
    # is-enabled exits 1 for "disabled".
    state=$(chroot "$R" systemctl is-enabled m365send-queue.timer 2>&1 || true)
    expect "systemctl is-enabled m365send-queue.timer" disabled "$state"
}
check "queue timer not enabled" not_enabled
check "newaliases succeeds" in_root newaliases

man_renders() { # PAGE-ARGS... : renders without a warning and says NEEDLE (last argument)
    local needle=${*: -1} out warnings
    set -- "${@:1:$#-1}"
    warnings=$(in_root man --warnings "$@" 2>&1 >/dev/null) || return 1
    [[ -z $warnings ]] || {
        echo "warnings: $warnings"
        return 1
    }
    out=$(in_root man "$@" 2>/dev/null | col -b)
    grep -q -- "$needle" <<<"$out" || {
        echo "no '$needle' in: $(head -5 <<<"$out")"
        return 1
    }
}
check "man -l m365send.8.gz renders" man_renders -l /usr/share/man/man8/m365send.8.gz "SENDMAIL COMPATIBILITY"
check "man -l m365send.toml.5.gz renders" man_renders -l /usr/share/man/man5/m365send.toml.5.gz "profiles.NAME.tls.client_cert"
check "man 8 sendmail is m365send's" man_renders 8 sendmail "m365send, sendmail, mailq, newaliases"
check "man 5 m365send.toml" man_renders 5 m365send.toml "KEYS"
check "bash completion loads" bash -c "chroot '$R' bash --norc -c 'source /usr/share/bash-completion/completions/m365send && complete -p m365send' | grep -q '_m365send m365send'"
if chroot "$R" sh -c 'command -v zsh' >/dev/null 2>&1; then
    check "zsh completion parses" in_root zsh -n /usr/share/zsh/vendor-completions/_m365send
fi
if chroot "$R" sh -c 'command -v fish' >/dev/null 2>&1; then
    check "fish completion parses" in_root fish --no-execute /usr/share/fish/vendor_completions.d/m365send.fish
fi

# As installed, nothing is configured: nothing is sent, the message is kept, the reason said.
unconfigured() {
    local m out rc=0
    m=$(marker pkg-unconfigured m365send)
    out=$(printf 'Subject: %s\n\nnot configured\n' "$m" | in_root /usr/sbin/sendmail -i root 2>&1) || rc=$?
    expect exit 78 "$rc" || return 1
    grep -q 'no profile is defined' <<<"$out" || {
        echo "stderr: $out"
        return 1
    }
    grep -q -F "$m" "$R/root/dead.letter" || {
        echo "not in /root/dead.letter"
        return 1
    }
    no_mail "$m" || {
        echo "it was delivered"
        return 1
    }
}
check "unconfigured: exit 78, kept, nothing sent" unconfigured
mailq_empty() { in_root /usr/bin/mailq | grep -q 'empty'; }
check "unconfigured: mailq lists an empty queue" mailq_empty

# ---------------------------------------------------------------------------------------------
# Configured as root's cron mail through the certificate connector: Postfix B.

configure() {
    cat >"$R/etc/m365send/config.toml" <<EOF
# Written by tests/packaging/run.sh: root's mail through Postfix B (the interop "MX endpoint").
default_profile = "cron"

[profiles.cron]
mode = "relay"
sender = "alerts@contoso.test"
rewrite_from = "when-local"
accepted_domains = ["contoso.test"]
default_domain = "contoso.test"
aliases = { root = "ops@contoso.test" }
helo = "client.interop.test"
retry = { attempts = 1 }
timeouts = { connect = 10, command = 15, data_end = 20 }
endpoint = { mx_host = "127.0.0.1", port = $PORT_MX }
tls = { min_version = "1.2", ca_file = "$W/pki/ca.crt", client_cert = "$W/pki/client.crt", client_key = "$W/pki/client.key" }
EOF
    chmod 0644 "$R/etc/m365send/config.toml"
}
configure

send_through_sendmail() {
    local m id
    m=$(marker pkg-sendmail m365send)
    printf 'From: root\nSubject: %s\n\nSent through the installed /usr/sbin/sendmail.\n' "$m" |
        in_root /usr/sbin/sendmail -FCronDaemon -i -B8BITMIME -oem root || return 1
    id=$(find_mail B "$m") || {
        echo "nothing arrived at Postfix B"
        return 1
    }
    expect "envelope sender" alerts@contoso.test "$(envelope_from B "$id")" &&
        expect "envelope recipients" ops@contoso.test "$(envelope_rcpts B "$id")" &&
        expect "Subject" "$m" "$(header_of B "$id" Subject)"
}
check "send through /usr/sbin/sendmail to Postfix" send_through_sendmail

# The queue in /var/spool/m365send, delivered by what the service unit runs.
queue_then_run_unit() {
    local m id exec
    m=$(marker pkg-queue m365send)
    printf 'Subject: %s\n\nQueued, then delivered by the unit.\n' "$m" | in_root /usr/sbin/sendmail -odq -i root ||
        return 1
    [[ -n $(find "$R/var/spool/m365send/meta" -name '*.json' 2>/dev/null) ]] || {
        echo "nothing in /var/spool/m365send/meta"
        return 1
    }
    in_root mailq | grep -q ops@contoso.test || {
        echo "mailq does not list it"
        return 1
    }
    exec=$(sed -n 's/^ExecStart=//p' "$R/usr/lib/systemd/system/m365send-queue.service")
    # shellcheck disable=SC2086 # the unit's command line, split as systemd would
    in_root $exec || return 1
    id=$(find_mail B "$m") || {
        echo "the queued message did not arrive"
        return 1
    }
    [[ -z $(find "$R/var/spool/m365send/meta" -name '*.json') ]] || {
        echo "still queued"
        return 1
    }
}
check "-odq into /var/spool/m365send, unit's ExecStart delivers" queue_then_run_unit

# postinst again (upgrade, dpkg-reconfigure): owners and modes back, administrator's override kept.
postinst_configure() { # as dpkg runs it (deb-systemd-helper wants to know)
    in_root DPKG_MAINTSCRIPT_PACKAGE=m365send DPKG_MAINTSCRIPT_NAME=postinst \
        /var/lib/dpkg/info/m365send.postinst configure "$VERSION"
}
postinst_again() {
    chmod 0755 "$R/var/spool/m365send"
    in_root dpkg -i /tmp/m365send.deb >/dev/null || return 1
    expect "spool after reinstall" "700 root root directory" "$(rstat /var/spool/m365send)" || return 1
    grep -q 'Written by tests/packaging/run.sh' "$R/etc/m365send/config.toml" || {
        echo "the edited conffile was replaced"
        return 1
    }
    in_root dpkg-statoverride --update --add root root 0750 /var/cache/m365send || return 1
    postinst_configure || return 1
    expect "cache with an override" "750 root root directory" "$(rstat /var/cache/m365send)" || return 1
    in_root dpkg-statoverride --remove /var/cache/m365send || return 1
    postinst_configure || return 1
    expect "cache" "700 root root directory" "$(rstat /var/cache/m365send)"
}
check "postinst is idempotent, keeps edits and overrides" postinst_again

# ---------------------------------------------------------------------------------------------
# Purge: an empty queue goes with the package; mail in the queue is kept. With apt, as an
# administrator would: packages that need an MTA (bsd-mailx) go with it.

PACKAGE_FILES=(/usr/bin/m365send /usr/sbin/sendmail /usr/lib/sendmail /usr/bin/mailq /usr/bin/newaliases
    /usr/share/man/man8/m365send.8.gz /usr/share/man/man5/m365send.toml.5.gz /usr/share/man/man8/sendmail.8.gz
    /usr/share/bash-completion/completions/m365send /usr/lib/systemd/system/m365send-queue.service
    /usr/lib/systemd/system/m365send-queue.timer /usr/share/doc/m365send)

purge_empty() {
    mkdir -p "$R/var/cache/m365send/tokens" && echo secret >"$R/var/cache/m365send/tokens/x"
    in_root apt-get purge -y -q m365send >/dev/null || return 1
    gone "${PACKAGE_FILES[@]}" /etc/m365send /var/spool/m365send /var/cache/m365send || return 1
    ! chroot "$R" dpkg-query -W -f='${Status}' m365send 2>/dev/null | grep -q installed || {
        echo "still known to dpkg"
        return 1
    }
    ! ls "$R/var/lib/systemd/deb-systemd-helper-enabled" 2>/dev/null | grep -q m365send || {
        echo "systemd helper state left"
        return 1
    }
}
check "purge: package, config, empty spool, cache removed" purge_empty

purge_keeps_mail() {
    local m out
    in_root dpkg -i /tmp/m365send.deb >/dev/null || return 1
    configure
    m=$(marker pkg-kept m365send)
    printf 'Subject: %s\n\nStill queued at purge.\n' "$m" | in_root /usr/sbin/sendmail -odq -i root || return 1
    out=$(in_root apt-get purge -y -q m365send 2>&1) || return 1
    grep -q 'still holds' <<<"$out" || {
        echo "no message about the kept spool: $out"
        return 1
    }
    grep -rqF "$m" "$R/var/spool/m365send/msg" || {
        echo "the queued message is gone"
        return 1
    }
    gone "${PACKAGE_FILES[@]}" /etc/m365send /var/cache/m365send
}
check "purge: a spool holding mail is kept, with a message" purge_keeps_mail

# The host itself is as it was.
host_untouched() {
    [[ ! -e /usr/bin/m365send || $(dpkg -S /usr/bin/m365send 2>/dev/null) != m365send:* ]] || {
        echo "m365send is installed on the host"
        return 1
    }
    expect "host /usr/sbin/sendmail" "$HOST_SENDMAIL" "$(readlink -f /usr/sbin/sendmail 2>/dev/null || true)" || return 1
    if [[ -n $HOST_MTA ]]; then
        dpkg-query -W -f='${Status}' "$HOST_MTA" | grep -q 'ok installed' || {
            echo "$HOST_MTA is gone from the host"
            return 1
        }
    fi
}
check "host unchanged (its MTA, /usr/sbin/sendmail)" host_untouched

echo
echo "packaging: $PASSED passed, ${#FAILED_CHECKS[@]} failed ($((SECONDS - STARTED))s)"
((${#FAILED_CHECKS[@]} == 0)) || {
    printf '  failed: %s\n' "${FAILED_CHECKS[@]}"
    exit 1
}
