#!/usr/bin/env bash
# Interop suite: m365send against real mail software, with msmtp as the peer.
#
# Starts, in a temporary directory and on 127.0.0.1 only:
#   - Dovecot (auth only) holding one mailbox, app@contoso.test;
#   - Postfix instance A, "client submission" (stand-in for smtp.office365.com:587):
#     STARTTLS required before AUTH, TLS >= 1.2, SASL through Dovecot, the envelope sender
#     must be the logged-in mailbox (553 5.7.1) and so must the From header (550 5.7.60);
#   - Postfix instance B, "MX endpoint" (stand-in for contoso-test.mail.protection.outlook.com):
#     STARTTLS offered, a client certificate requested; a certificate from our private CA
#     relays anywhere, otherwise only contoso.test is accepted.
# Both instances hand every message to a capture script (a pipe(8) transport, written to
# WORK/bin/capture) which writes the exact bytes and the envelope to files the cases read back.
#
# Then it proves the harness with swaks, runs every case with m365send and with msmtp, prints
# both results side by side and exits non-zero when any case or harness check failed.
# Nothing outside the work directory is changed; /etc/postfix is only read.
# See tests/interop/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
M365SEND=${M365SEND:-$ROOT/target/debug/m365send}
case $M365SEND in /*) ;; *) M365SEND=$PWD/$M365SEND ;; esac
MSMTP=${MSMTP:-/usr/bin/msmtp}
# Seconds one client command may take before it is killed (a hang is a failure, not a wait).
INTEROP_TIMEOUT=${INTEROP_TIMEOUT:-30}
# Seconds after which the remaining cases are not started (the suite must end within 10 min).
INTEROP_BUDGET=${INTEROP_BUDGET:-480}
# Which tools to run the cases with, and which cases (empty: all).
INTEROP_TOOLS=${INTEROP_TOOLS:-m365send msmtp}
INTEROP_CASES=${INTEROP_CASES:-}
# 1: keep the work directory (logs, delivered mail) after the run.
INTEROP_KEEP=${INTEROP_KEEP:-0}
# The server name the tools are given: 127.0.0.1, or localhost (the server certificate has
# both; localhost may resolve to ::1 first, where nothing listens).
INTEROP_HOST=${INTEROP_HOST:-127.0.0.1}
# 1: never run apt-get (fail if something is missing).
INTEROP_NO_APT=${INTEROP_NO_APT:-0}

ALL_CASES="submit large wrong-sender relay-cert relay-nocert relay-foreign-cert direct-internal
           direct-unknown-recipient tempfail queue oauth-token server-option compose-attach mailx s-nail git-send-email php-mail cron swaks-bs
           swaks-bs-tempfail"

MAILBOX=app@contoso.test
MAILBOX_PASSWORD=interop-Passw0rd
GIT=/usr/bin/git # Debian's git: the one git-email's send-email belongs to

say() { printf 'interop: %s\n' "$*" >&2; }
die() {
    say "FATAL: $*"
    exit 2
}

# ---------------------------------------------------------------------------------------------
# Packages

# libmailtools-perl, libemail-valid-perl: git send-email needs Mail::Address and Email::Valid
# (Recommends of git-email, which --no-install-recommends leaves out). The Perl TLS and SASL
# modules are for swaks; python3 finds free ports and parses composed messages.
PACKAGES=(postfix dovecot-core swaks bsd-mailx s-nail git git-email libmailtools-perl
    libemail-valid-perl php-cli openssl msmtp python3 ca-certificates libnet-ssleay-perl
    libio-socket-ssl-perl libauthen-sasl-perl util-linux coreutils)

packages_present() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || return 1
    done
}

install_packages() {
    if packages_present; then
        say "packages already installed"
        return
    fi
    [[ $INTEROP_NO_APT == 1 ]] && die "packages missing and INTEROP_NO_APT=1: ${PACKAGES[*]}"
    say "installing ${PACKAGES[*]}"
    # "No configuration": postfix installs without writing /etc/postfix/main.cf, so no system
    # instance is configured or started.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Keep maintainer scripts from starting system services (dovecot) if no policy exists yet;
    # an existing policy-rc.d is left as it is.
    local policy_made=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        policy_made=1
    fi
    local rc=0
    {
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"
    } >"$TMPDIR_APT_LOG" 2>&1 || rc=$?
    [[ $policy_made == 1 ]] && rm -f /usr/sbin/policy-rc.d
    if [[ $rc != 0 ]]; then
        tail -30 "$TMPDIR_APT_LOG" >&2
        die "apt-get failed ($rc)"
    fi
}

# ---------------------------------------------------------------------------------------------
# Work directory, ports, cleanup

W=
DOVECOT_PID=
OAUTH_STUB_PID=

cleanup() {
    local rc=$?
    set +e
    [[ -n $W ]] || exit "$rc"
    [[ -f $W/pfA/etc/main.cf ]] && postfix -c "$W/pfA/etc" stop >/dev/null 2>&1
    [[ -f $W/pfB/etc/main.cf ]] && postfix -c "$W/pfB/etc" stop >/dev/null 2>&1
    local pidfile pid
    for pidfile in "$W/pfA/queue/pid/master.pid" "$W/pfB/queue/pid/master.pid" \
        "$W/dovecot/run/master.pid"; do
        [[ -f $pidfile ]] || continue
        pid=$(tr -dc 0-9 <"$pidfile")
        [[ -n $pid ]] && kill "$pid" 2>/dev/null
    done
    [[ -n $DOVECOT_PID ]] && kill "$DOVECOT_PID" 2>/dev/null
    [[ -n $OAUTH_STUB_PID ]] && kill "$OAUTH_STUB_PID" 2>/dev/null && wait "$OAUTH_STUB_PID" 2>/dev/null
    # Give the masters a moment to take their children down.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for pidfile in "$W/pfA/queue/pid/master.pid" "$W/pfB/queue/pid/master.pid" \
            "$W/dovecot/run/master.pid"; do
            [[ -f $pidfile ]] || continue
            pid=$(tr -dc 0-9 <"$pidfile")
            [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && alive=1
        done
        [[ $alive == 0 ]] && break
        sleep 0.5
    done
    [[ -n $DOVECOT_PID ]] && wait "$DOVECOT_PID" 2>/dev/null
    if [[ $INTEROP_KEEP == 1 || $rc != 0 ]]; then
        say "work directory kept: $W"
    else
        rm -rf "$W"
    fi
    exit "$rc"
}

setup_workdir() {
    if [[ -n ${INTEROP_DIR:-} ]]; then
        W=$INTEROP_DIR
        mkdir -p "$W"
        [[ -z $(ls -A "$W") ]] || die "INTEROP_DIR=$W is not empty"
    else
        W=$(mktemp -d /tmp/m365send-interop.XXXXXX)
    fi
    W=$(cd "$W" && pwd)
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    # Postfix's pipe runs the capture script as nobody: the path must be searchable.
    chmod 0755 "$W"
    local d=$W
    while [[ $d != / ]]; do
        d=$(dirname "$d")
        if ! runuser -u nobody -- test -x "$d"; then
            die "nobody cannot enter $d; use INTEROP_DIR under /tmp"
        fi
    done
    # Unix socket paths are limited to ~107 bytes.
    ((${#W} < 60)) || die "work directory path too long for unix sockets: $W"
    mkdir -p "$W"/{log,pki,secrets,out,bin,home,mail/A,mail/B}
    chmod 0700 "$W/secrets" "$W/pki"
    chmod 1777 "$W/mail/A" "$W/mail/B"
    chmod 0755 "$W/log"
    say "work directory $W"
}

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

wait_port() { # PORT: wait until something listens on 127.0.0.1:PORT
    for _ in $(seq 1 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# Private CA and certificates

make_pki() {
    local p=$W/pki
    say "making a private CA and certificates"
    (
        cd "$p"
        umask 077
        local days=3
        openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "/CN=m365send interop CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout ca.key -out ca.crt 2>/dev/null
        # Server: localhost and 127.0.0.1 (clients connect to the IP literal).
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
        printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days $days \
            -extfile server.ext -out server.crt 2>/dev/null
        # Client certificate for the relay connector, as Microsoft 365 wants it: the subject
        # names a domain of the tenant.
        printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
            "extendedKeyUsage=clientAuth" "subjectAltName=DNS:relay.contoso.test" >client.ext
        openssl req -newkey rsa:2048 -nodes -subj "/CN=relay.contoso.test" -keyout client.key -out client.csr 2>/dev/null
        openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days $days \
            -extfile client.ext -out client.crt 2>/dev/null
        # The same kind of certificate from a CA the MX endpoint does not trust.
        openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "/CN=some other CA" \
            -addext "basicConstraints=critical,CA:TRUE" -keyout foreign-ca.key -out foreign-ca.crt 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=relay.contoso.test" -keyout foreign.key -out foreign.csr 2>/dev/null
        openssl x509 -req -in foreign.csr -CA foreign-ca.crt -CAkey foreign-ca.key -CAcreateserial \
            -days $days -extfile client.ext -out foreign.crt 2>/dev/null
        rm -f ./*.csr ./*.srl
        chmod 0644 ca.crt
    )
    openssl verify -CAfile "$p/ca.crt" "$p/server.crt" "$p/client.crt" >/dev/null ||
        die "certificate chain does not verify"
    if openssl verify -CAfile "$p/ca.crt" "$p/foreign.crt" >/dev/null 2>&1; then
        die "the foreign certificate verifies against our CA"
    fi
}

# ---------------------------------------------------------------------------------------------
# Dovecot: authentication only (no IMAP/POP), one mailbox in a passwd-file

start_dovecot() {
    local d=$W/dovecot
    mkdir -p "$d/run" "$d/state"
    printf '%s:{PLAIN}%s::::::\n' "$MAILBOX" "$MAILBOX_PASSWORD" >"$d/users"
    chown root:dovecot "$d/users"
    chmod 0640 "$d/users"
    cat >"$d/oauth2.conf.ext" <<EOF
introspection_mode = post
introspection_url = http://127.0.0.1:$PORT_OAUTH/introspect
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
EOF
    cat >"$d/dovecot.conf" <<EOF
# m365send interop: auth service for Postfix instance A only.
base_dir = $d/run
state_dir = $d/state
instance_name = m365send-interop-$$
protocols =
ssl = no
log_path = $W/log/dovecot.log
auth_mechanisms = plain login xoauth2 oauthbearer
# Postfix enforces TLS before AUTH (smtpd_tls_auth_only); Dovecot only sees the socket.
disable_plaintext_auth = no
# Passwords for PLAIN/LOGIN, OAuth2 access tokens (checked by oauth_stub.py) for XOAUTH2.
passdb {
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u $d/users
}
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $d/oauth2.conf.ext
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}
service auth {
  unix_listener auth-postfix {
    mode = 0666
  }
}
EOF
    # In the foreground as our own child, so that we reap it when it stops (a daemonized master
    # is left to PID 1, which in a container may not reap it promptly).
    dovecot -F -c "$d/dovecot.conf" </dev/null >>"$W/log/dovecot.log" 2>&1 &
    DOVECOT_PID=$!
    for _ in $(seq 1 50); do
        [[ -S $d/run/auth-postfix ]] && return 0
        kill -0 "$DOVECOT_PID" 2>/dev/null || break
        sleep 0.2
    done
    cat "$W/log/dovecot.log" >&2 || true
    die "dovecot auth socket did not appear"
}

# The token introspection endpoint Dovecot's oauth2 passdb asks (python3, our child).
start_oauth_stub() {
    # As long as a real Entra ID access token (a JWT of about 2 KB), so that the XOAUTH2
    # initial response is far longer than the 512 bytes RFC 5321 promises for a command line.
    python3 -c 'import base64, os
b = lambda n: base64.urlsafe_b64encode(os.urandom(n)).decode().rstrip("=")
print("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + b(1400) + "." + b(256))' >"$W/secrets/app.token"
    chmod 0600 "$W/secrets/app.token"
    python3 "$HERE/oauth_stub.py" "$PORT_OAUTH" "$W/secrets/app.token" "$MAILBOX" \
        </dev/null >>"$W/log/oauth_stub.log" 2>&1 &
    OAUTH_STUB_PID=$!
    wait_port "$PORT_OAUTH" || die "the OAuth introspection stub did not start"
}

# ---------------------------------------------------------------------------------------------
# Postfix instances

write_capture() {
    # Runs as nobody (pipe(8) user=). argv: DIR QUEUE_ID SENDER RECIPIENT...
    cat >"$W/bin/capture" <<'EOF'
#!/bin/sh
# Deliver one message for the interop suite: exact bytes to DIR/ID.eml, the envelope sender
# to DIR/ID.from and one line per envelope recipient to DIR/ID.rcpt.
set -eu
dir=$1 id=$2 sender=$3
shift 3
umask 022
tmp=$dir/.tmp.$id.$$
cat >"$tmp"
mv -f "$tmp" "$dir/$id.eml"
printf '%s\n' "$sender" >"$dir/$id.from"
for r in "$@"; do printf '%s\n' "$r" >>"$dir/$id.rcpt"; done
EOF
    chmod 0755 "$W/bin/capture"
}

# master.cf: no chroot (the capture script and the Dovecot socket live in $W); only the
# services these instances use.
write_master_cf() { # DIR PORT MAILDIR
    cat >"$1/etc/master.cf" <<EOF
# service      type  private unpriv chroot wakeup maxproc command + args
127.0.0.1:$2   inet  n       -       n       -       -       smtpd
pickup         unix  n       -       n       60      1       pickup
cleanup        unix  n       -       n       -       0       cleanup
qmgr           unix  n       -       n       300     1       qmgr
tlsmgr         unix  -       -       n       1000?   1       tlsmgr
rewrite        unix  -       -       n       -       -       trivial-rewrite
bounce         unix  -       -       n       -       0       bounce
defer          unix  -       -       n       -       0       bounce
trace          unix  -       -       n       -       0       bounce
verify         unix  -       -       n       -       1       verify
flush          unix  n       -       n       1000?   0       flush
proxymap       unix  -       -       n       -       -       proxymap
showq          unix  n       -       n       -       -       showq
error          unix  -       -       n       -       -       error
retry          unix  -       -       n       -       -       error
discard        unix  -       -       n       -       -       discard
anvil          unix  -       -       n       -       1       anvil
scache         unix  -       -       n       -       1       scache
postlog        unix-dgram n  -       n       -       1       postlogd
capture        unix  -       n       n       -       -       pipe
  user=nobody:nogroup argv=$W/bin/capture $3 \${queue_id} \${sender} \${recipient}
EOF
}

write_main_cf_common() { # DIR NAME HOSTNAME
    cat >"$1/etc/main.cf" <<EOF
# m365send interop, instance $2. Written by tests/interop/run.sh; nothing system-wide.
compatibility_level = 3.6
queue_directory = $1/queue
data_directory = $1/data
command_directory = $(postconf -c /etc/postfix -dh command_directory 2>/dev/null || echo /usr/sbin)
daemon_directory = $(postconf -c /etc/postfix -dh daemon_directory 2>/dev/null || echo /usr/lib/postfix/sbin)
shlib_directory = $(postconf -c /etc/postfix -dh shlib_directory 2>/dev/null || echo /usr/lib/postfix)
meta_directory = $(postconf -c /etc/postfix -dh meta_directory 2>/dev/null || echo /etc/postfix)
mail_owner = postfix
setgid_group = postdrop
maillog_file = $W/log/postfix-$2.log
maillog_file_prefixes = $W/log
myhostname = $3
mydomain = interop.test
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
smtpd_banner = \$myhostname ESMTP m365send-interop-$2
biff = no
# Mail from 127.0.0.1 is "remote": no header rewriting, no added Date/Message-ID/From.
local_header_rewrite_clients =
alias_maps =
alias_database =
local_recipient_maps =
default_process_limit = 10
message_size_limit = 52428800
# Every recipient goes to the capture pipe, one delivery per recipient.
default_transport = capture
relay_transport = capture
local_transport = capture
virtual_transport = capture
capture_destination_recipient_limit = 1
smtpd_tls_chain_files = $W/pki/server.key, $W/pki/server.crt
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtpd_tls_loglevel = 1
smtpd_tls_received_header = no
mime_header_checks =
nested_header_checks =
EOF
}

# Config, queue and data directories of one instance; Postfix creates the queue's
# subdirectories itself (post-install create-missing) on start.
new_postfix_dirs() { # DIR
    mkdir -p "$1/etc" "$1/queue" "$1/data"
    chown postfix:postfix "$1/data"
    chmod 0700 "$1/data"
}

setup_postfix_submission() { # instance A
    local d=$W/pfA
    new_postfix_dirs "$d"
    write_main_cf_common "$d" A submission.interop.test
    write_master_cf "$d" "$PORT_SUB" "$W/mail/A"
    printf '%s %s\n' "$MAILBOX" "$MAILBOX" >"$d/etc/sender_login"
    # A recipient that always gets Microsoft's transient "try again later".
    printf '%s\n' "tempfail@contoso.test 451 4.7.500 Access denied, please try again later" \
        >"$d/etc/recipient_access"
    # Exchange Online also refuses a From header that is not the mailbox (5.7.60).
    cat >"$d/etc/header_checks" <<EOF
if /^From:/
/[<[:space:]:]${MAILBOX//./[.]}>?[[:space:]]*$/ DUNNO
/./ REJECT 5.7.60 SMTP; Client does not have permissions to send as this sender
endif
EOF
    cat >>"$d/etc/main.cf" <<EOF
# Client submission, like smtp.office365.com:587.
# Room for an AUTH XOAUTH2 line carrying a real-sized token (Exchange Online takes them).
line_length_limit = 16384
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = $W/dovecot/run/auth-postfix
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
smtpd_sender_login_maps = texthash:$d/etc/sender_login
smtpd_sender_restrictions = reject_sender_login_mismatch
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = check_recipient_access texthash:$d/etc/recipient_access,
    permit_sasl_authenticated, reject
relay_domains =
header_checks = regexp:$d/etc/header_checks
EOF
}

setup_postfix_mx() { # instance B
    local d=$W/pfB
    new_postfix_dirs "$d"
    write_main_cf_common "$d" B mx.interop.test
    write_master_cf "$d" "$PORT_MX" "$W/mail/B"
    # An internal address that does not exist (directory-based edge blocking).
    printf '%s\n' "nobody@contoso.test 550 5.4.1 Recipient address rejected: Access denied" \
        >"$d/etc/recipient_access"
    cat >>"$d/etc/main.cf" <<EOF
# MX endpoint with a certificate connector, like contoso-test.mail.protection.outlook.com:25.
smtpd_tls_security_level = may
smtpd_tls_ask_ccert = yes
smtpd_tls_CAfile = $W/pki/ca.crt
smtpd_tls_fingerprint_digest = sha256
tls_append_default_CA = no
relay_domains = contoso.test
smtpd_relay_restrictions = permit_tls_all_clientcerts, reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access texthash:$d/etc/recipient_access
header_checks =
EOF
}

start_postfix() { # NAME PORT
    local d=$W/pf$1
    postfix -c "$d/etc" check >"$W/log/postfix-$1.check" 2>&1 ||
        {
            cat "$W/log/postfix-$1.check" >&2
            die "postfix $1: configuration check failed"
        }
    postfix -c "$d/etc" start >>"$W/log/postfix-$1.check" 2>&1 ||
        {
            cat "$W/log/postfix-$1.check" "$W/log/postfix-$1.log" >&2 2>/dev/null
            die "postfix $1 did not start"
        }
    wait_port "$2" || {
        cat "$W/log/postfix-$1.log" >&2 || true
        die "postfix $1 does not listen on 127.0.0.1:$2"
    }
    say "postfix $1 listening on 127.0.0.1:$2"
}

# ---------------------------------------------------------------------------------------------
# Reading delivered mail back

# Echo the queue id of the message in mail/INST whose bytes contain MARKER, once Postfix has
# finished with it (its queue file is gone, so every recipient has been written). Fails after
# a while.
find_mail() { # INST MARKER
    local dir=$W/mail/$1 f id
    for _ in $(seq 1 75); do
        f=$(grep -l -F -- "$2" "$dir"/*.eml 2>/dev/null | head -1 || true)
        if [[ -n $f ]]; then
            id=$(basename "$f" .eml)
            if [[ -z $(find "$W/pf$1/queue/incoming" "$W/pf$1/queue/active" \
                "$W/pf$1/queue/deferred" -name "$id" 2>/dev/null) ]]; then
                echo "$id"
                return 0
            fi
        fi
        sleep 0.2
    done
    return 1
}

# True when nothing containing MARKER reached either instance (after a grace second).
no_mail() { # MARKER
    sleep 1
    ! grep -q -l -F -- "$1" "$W"/mail/A/*.eml "$W"/mail/B/*.eml 2>/dev/null
}

# The delivered bytes without the Received: header Postfix put on top.
delivered_bytes() { # INST ID
    awk 'NR == 1 && /^Received: / { skip = 1; next }
         skip && /^[ \t]/ { next }
         { skip = 0; print }' "$W/mail/$1/$2.eml"
}

envelope_from() { cat "$W/mail/$1/$2.from"; }
envelope_rcpts() { sort "$W/mail/$1/$2.rcpt" | tr '\n' ' ' | sed 's/ $//'; }

# Value of the first header NAME (unfolded) in the delivered message.
header_of() { # INST ID NAME
    # Reads its whole input (no early exit: with pipefail, SIGPIPE upstream would be a failure).
    delivered_bytes "$1" "$2" | awk -v name="$3" '
        BEGIN { want = tolower(name) ":" }
        done { next }
        /^$/ { done = 1; next }
        found && /^[ \t]/ { val = val $0; next }
        found { done = 1; next }
        tolower(substr($0, 1, length(want))) == want { found = 1; val = substr($0, length(want) + 1) }
        END { sub(/^[ \t]+/, "", val); print val }'
}

body_of() { # INST ID: everything after the first empty line
    delivered_bytes "$1" "$2" | awk 'body { print; next } /^$/ { body = 1 }'
}

# ---------------------------------------------------------------------------------------------
# Results

declare -A RESULT=()
FAILED=0
REASON=

NOTE=
fail() { # MESSAGE: record why the current case failed; always returns 1
    REASON=$*
    return 1
}

# Compare FILE_EXPECTED with bytes on stdin; on a difference, keep a diff for the report.
same_bytes() { # NAME EXPECTED_FILE
    local got=$W/out/$1.got
    cat >"$got"
    if cmp -s "$2" "$got"; then return 0; fi
    diff -u "$2" "$got" >"$W/out/$1.diff" || true
    say "bytes differ for $1:"
    head -40 "$W/out/$1.diff" | sed 's/^/    /' >&2
    return 1
}

expect_eq() { # WHAT EXPECTED GOT
    [[ $2 == "$3" ]] || fail "$1: expected '$2', got '$3'"
}

# ---------------------------------------------------------------------------------------------
# The tools: m365send and msmtp, driven the same way

write_m365send_config() { # DEFAULT_PROFILE FILE
    local pki=$W/pki
    cat >"$2" <<EOF
# m365send interop configuration (written by tests/interop/run.sh)
default_profile = "$1"
spool_dir = "$W/m365send/spool"
cache_dir = "$W/m365send/cache"
dead_letter = "$W/m365send/dead.letter"

[log]
file = "$W/log/m365send.log"

# Client submission: Postfix A plays smtp.office365.com:587. The password comes from a
# command: callers such as swaks --pipe start us with SIGCHLD ignored, where a careless
# wait() for that command fails.
[profiles.app]
mode = "submit"
mailbox = "$MAILBOX"
sender = "$MAILBOX"
accepted_domains = ["contoso.test"]
default_domain = "contoso.test"
aliases = { root = "ops@contoso.test" }
helo = "client.interop.test"
queue = "never"
retry = { attempts = 1 }
timeouts = { connect = 10, command = 15, data_end = 20 }
endpoint = { host = "$INTEROP_HOST", port = $PORT_SUB }
tls = { min_version = "1.2", ca_file = "$pki/ca.crt" }
auth = { method = "password", user = "$MAILBOX", password = { command = "cat $W/secrets/app.password" } }

# The same mailbox with OAuth2 (XOAUTH2) and an access token obtained elsewhere.
[profiles.app-oauth]
mode = "submit"
mailbox = "$MAILBOX"
sender = "$MAILBOX"
accepted_domains = ["contoso.test"]
helo = "client.interop.test"
queue = "never"
retry = { attempts = 1 }
timeouts = { connect = 10, command = 15, data_end = 20 }
endpoint = { host = "$INTEROP_HOST", port = $PORT_SUB }
tls = { min_version = "1.2", ca_file = "$pki/ca.crt" }
auth = { method = "oauth", user = "$MAILBOX", token = { file = "$W/secrets/app.token" } }

# The same mailbox, every message through the queue.
[profiles.app-queue]
mode = "submit"
mailbox = "$MAILBOX"
sender = "$MAILBOX"
accepted_domains = ["contoso.test"]
helo = "client.interop.test"
queue = "always"
retry = { attempts = 1 }
timeouts = { connect = 10, command = 15, data_end = 20 }
endpoint = { host = "$INTEROP_HOST", port = $PORT_SUB }
tls = { min_version = "1.2", ca_file = "$pki/ca.crt" }
auth = { method = "password", user = "$MAILBOX", password = { file = "$W/secrets/app.password" } }

# The same mailbox with no endpoint: the case gives --server.
[profiles.app-no-endpoint]
mode = "submit"
mailbox = "$MAILBOX"
sender = "$MAILBOX"
accepted_domains = ["contoso.test"]
helo = "client.interop.test"
queue = "never"
retry = { attempts = 1 }
timeouts = { connect = 10, command = 15, data_end = 20 }
tls = { min_version = "1.2", ca_file = "$pki/ca.crt" }
auth = { method = "password", user = "$MAILBOX", password = { file = "$W/secrets/app.password" } }

# The same mailbox sending as an address it may not send as.
[profiles.wrong-sender]
mode = "submit"
mailbox = "$MAILBOX"
sender = "ceo@contoso.test"
rewrite_from = "always"
accepted_domains = ["contoso.test"]
helo = "client.interop.test"
queue = "never"
retry = { attempts = 1 }
timeouts = { connect = 10, command = 15, data_end = 20 }
endpoint = { host = "$INTEROP_HOST", port = $PORT_SUB }
tls = { min_version = "1.2", ca_file = "$pki/ca.crt" }
auth = { method = "password", user = "$MAILBOX", password = { file = "$W/secrets/app.password" } }

# SMTP relay through a certificate connector: Postfix B plays the MX endpoint.
[profiles.relay]
mode = "relay"
sender = "alerts@contoso.test"
accepted_domains = ["contoso.test"]
default_domain = "contoso.test"
aliases = { root = "ops@contoso.test" }
helo = "client.interop.test"
queue = "never"
retry = { attempts = 1 }
timeouts = { connect = 10, command = 15, data_end = 20 }
endpoint = { mx_host = "$INTEROP_HOST", port = $PORT_MX }
tls = { min_version = "1.2", ca_file = "$pki/ca.crt", client_cert = "$pki/client.crt", client_key = "$pki/client.key" }

[profiles.relay-nocert]
mode = "relay"
sender = "alerts@contoso.test"
accepted_domains = ["contoso.test"]
helo = "client.interop.test"
queue = "never"
retry = { attempts = 1 }
timeouts = { connect = 10, command = 15, data_end = 20 }
endpoint = { mx_host = "$INTEROP_HOST", port = $PORT_MX }
tls = { min_version = "1.2", ca_file = "$pki/ca.crt" }

[profiles.relay-foreign-cert]
mode = "relay"
sender = "alerts@contoso.test"
accepted_domains = ["contoso.test"]
helo = "client.interop.test"
queue = "never"
retry = { attempts = 1 }
timeouts = { connect = 10, command = 15, data_end = 20 }
endpoint = { mx_host = "$INTEROP_HOST", port = $PORT_MX }
tls = { min_version = "1.2", ca_file = "$pki/ca.crt", client_cert = "$pki/foreign.crt", client_key = "$pki/foreign.key" }

# Direct send: MX endpoint, no authentication, internal recipients only.
[profiles.direct]
mode = "direct"
sender = "alerts@contoso.test"
accepted_domains = ["contoso.test"]
helo = "client.interop.test"
queue = "never"
retry = { attempts = 1 }
timeouts = { connect = 10, command = 15, data_end = 20 }
endpoint = { mx_host = "$INTEROP_HOST", port = $PORT_MX }
tls = { min_version = "1.2", ca_file = "$pki/ca.crt" }

# root's cron mail through the certificate connector, root aliased to ops.
[profiles.cron]
mode = "relay"
sender = "alerts@contoso.test"
rewrite_from = "when-local"
accepted_domains = ["contoso.test"]
default_domain = "contoso.test"
aliases = { root = "ops@contoso.test" }
helo = "client.interop.test"
queue = "never"
retry = { attempts = 1 }
timeouts = { connect = 10, command = 15, data_end = 20 }
endpoint = { mx_host = "$INTEROP_HOST", port = $PORT_MX }
tls = { min_version = "1.2", ca_file = "$pki/ca.crt", client_cert = "$pki/client.crt", client_key = "$pki/client.key" }
EOF
    chmod 0600 "$2"
}

write_msmtprc() { # DEFAULT_ACCOUNT FILE
    local pki=$W/pki
    cat >"$2" <<EOF
# msmtp peer configuration (written by tests/interop/run.sh), same servers and roles.
defaults
host 127.0.0.1
tls on
tls_starttls on
tls_trust_file $pki/ca.crt
tls_min_dh_prime_bits 2048
domain client.interop.test
logfile $W/log/msmtp.log
aliases $W/aliases
set_from_header auto

account app
port $PORT_SUB
auth on
user $MAILBOX
passwordeval cat $W/secrets/app.password
from $MAILBOX

account app-no-endpoint : app

account app-queue : app

account app-oauth : app
auth xoauth2
passwordeval cat $W/secrets/app.token

account wrong-sender : app
from ceo@contoso.test
set_from_header on

account relay
port $PORT_MX
auth off
from alerts@contoso.test
tls_cert_file $pki/client.crt
tls_key_file $pki/client.key

account relay-nocert
port $PORT_MX
auth off
from alerts@contoso.test

account relay-foreign-cert
port $PORT_MX
auth off
from alerts@contoso.test
tls_cert_file $pki/foreign.crt
tls_key_file $pki/foreign.key

account direct
port $PORT_MX
auth off
from alerts@contoso.test

account cron : relay
set_from_header on

account default : $1
EOF
    chmod 0600 "$2"
}

setup_tools() {
    printf '%s\n' "$MAILBOX_PASSWORD" >"$W/secrets/app.password"
    chmod 0600 "$W/secrets/app.password"
    printf 'root: ops@contoso.test\n' >"$W/aliases"
    mkdir -p "$W/m365send/spool" "$W/m365send/cache" "$W/bin/m365send" "$W/bin/msmtp"
    write_m365send_config app "$W/m365send.toml"
    write_m365send_config cron "$W/m365send-cron.toml"
    write_msmtprc app "$W/msmtprc"
    write_msmtprc cron "$W/msmtprc-cron"
    # "sendmail" for each tool, first in a PATH or given as a caller's sendmail path.
    ln -s "$M365SEND" "$W/bin/m365send/sendmail"
    cat >"$W/bin/msmtp/sendmail" <<EOF
#!/bin/sh
# The argv each caller uses, for the record (callers pass the same to m365send's link).
printf '%s\n' "sendmail \$*" >>"$W/log/sendmail-argv.log"
exec $MSMTP -C "\${MSMTP_RC:?}" "\$@"
EOF
    chmod 0755 "$W/bin/msmtp/sendmail"
    # A HOME without the developer's dotfiles (git config, .mailrc, .msmtprc).
    printf '[user]\n\tname = Interop App\n\temail = %s\n' "$MAILBOX" >"$W/home/.gitconfig"
}

tool_ready() { # TOOL: can it run at all?
    case $1 in
    m365send)
        [[ -x $M365SEND ]] || fail "m365send binary not found: $M365SEND (build it, or set M365SEND)"
        ;;
    msmtp) [[ -x $MSMTP ]] || fail "msmtp not found: $MSMTP" ;;
    esac
}

# Run TOOL directly with PROFILE and sendmail-style ARGS, stdin from the caller.
# Sets RC; stdout/stderr go to $W/out/NAME.TOOL.{out,err}.
RC=0
send_with() { # NAME TOOL PROFILE ARGS...
    local name=$1 tool=$2 profile=$3
    shift 3
    RC=0
    case $tool in
    m365send)
        timeout -k 5 "$INTEROP_TIMEOUT" env HOME="$W/home" \
            "$M365SEND" -C "$W/m365send.toml" --profile "$profile" "$@" \
            >"$W/out/$name.$tool.out" 2>"$W/out/$name.$tool.err" || RC=$?
        ;;
    msmtp)
        timeout -k 5 "$INTEROP_TIMEOUT" env HOME="$W/home" \
            "$MSMTP" -C "$W/msmtprc" -a "$profile" "$@" \
            >"$W/out/$name.$tool.out" 2>"$W/out/$name.$tool.err" || RC=$?
        ;;
    esac
    [[ $RC == 124 || $RC == 137 ]] && say "$name/$tool: killed after ${INTEROP_TIMEOUT}s"
    return 0
}

# Run a caller (COMMAND...) with TOOL installed as `sendmail` (WORK/bin/TOOL/sendmail, first
# in PATH; cases also give that path to callers that take one), with the tool's configuration
# whose default profile is VARIANT's.
as_sendmail() { # NAME TOOL VARIANT COMMAND...
    local name=$1 tool=$2 variant=$3 suffix=
    shift 3
    [[ $variant == cron ]] && suffix=-cron
    RC=0
    timeout -k 5 "$INTEROP_TIMEOUT" env HOME="$W/home" PATH="$W/bin/$tool:$PATH" \
        M365SEND_CONFIG="$W/m365send$suffix.toml" MSMTP_RC="$W/msmtprc$suffix" \
        "$@" >"$W/out/$name.$tool.out" 2>"$W/out/$name.$tool.err" || RC=$?
    [[ $RC == 124 || $RC == 137 ]] && say "$name/$tool: killed after ${INTEROP_TIMEOUT}s"
    return 0
}

stderr_of() { cat "$W/out/$1.$2.err" 2>/dev/null; }

expect_rc0() { # NAME TOOL
    case $RC in
    124 | 137) fail "no answer: killed after ${INTEROP_TIMEOUT}s (a hang)" ;;
    esac || return 1
    [[ $RC == 0 ]] || fail "exit $RC: $(stderr_of "$1" "$2" | head -3 | tr '\n' ' ' | cut -c1-300)"
}

# A unique marker per case and tool, put in the Subject and the body.
marker() { printf 'ix-%s-%s-%s' "$1" "$2" "$RANDOM$RANDOM"; }

# ---------------------------------------------------------------------------------------------
# Cases. Each is `case_NAME TOOL`; it returns 0 (PASS) or 1 with REASON set; `return 2`
# means the case does not apply to the tool (n/a).

# The message of the submit case: Cc, Bcc, 8-bit UTF-8 body, a lone dot, dot-led lines,
# trailing spaces, a long folded header.
submit_message() { # MARKER FROM
    cat <<EOF
From: Interop App <$2>
To: Ops <ops@contoso.test>
Cc: audit@fabrikam.example
Bcc: hidden@contoso.test
Subject: interop submit $1
Date: Fri, 27 Nov 2026 21:00:00 +0000
Message-ID: <$1@interop.test>
X-Long-Header: a header long enough to have been folded by the caller, so that the
 continuation line must arrive exactly as it was given
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: 8bit

First line of $1.
.
.a line that starts with a dot
..and one with two
Grüße, ça marche ✓ — 8-bit text
trailing spaces   
From the start of a line (mbox would quote this)

last line
EOF
}

case_submit() {
    local tool=$1 m
    m=$(marker submit "$tool")
    submit_message "$m" "$MAILBOX" >"$W/out/submit.$tool.in"
    # Expected: the same bytes without the Bcc header.
    grep -v '^Bcc: ' "$W/out/submit.$tool.in" >"$W/out/submit.$tool.expected"
    send_with submit "$tool" app -t -i <"$W/out/submit.$tool.in"
    expect_rc0 submit "$tool" || return 1
    local id
    id=$(find_mail A "$m") || fail "not delivered to the submission server" || return 1
    expect_eq "envelope sender" "$MAILBOX" "$(envelope_from A "$id")" || return 1
    expect_eq "envelope recipients" "audit@fabrikam.example hidden@contoso.test ops@contoso.test" \
        "$(envelope_rcpts A "$id")" || return 1
    if delivered_bytes A "$id" | grep -i '^Bcc:' >/dev/null; then fail "Bcc header delivered"; return 1; fi
    delivered_bytes A "$id" | same_bytes "submit.$tool" "$W/out/submit.$tool.expected" ||
        fail "delivered bytes differ from the input less Bcc (see out/submit.$tool.diff)"
}

# About 4 MB of text (dot-led lines, a lone dot every 1000 lines, 8-bit) through submission:
# streaming, dot-stuffing and line endings at size.
case_large() {
    local tool=$1 m
    m=$(marker large "$tool")
    {
        printf 'From: %s\nTo: ops@contoso.test\nSubject: interop large %s\n' "$MAILBOX" "$m"
        printf 'Date: Fri, 27 Nov 2026 21:00:00 +0000\nMessage-ID: <%s@interop.test>\n' "$m"
        printf 'MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n'
        printf 'Content-Transfer-Encoding: 8bit\n\n'
        awk -v m="$m" 'BEGIN { for (i = 1; i <= 50000; i++) {
            if (i % 1000 == 0) print "."
            else if (i % 7 == 0) printf ".%06d dot-led line of %s, Grüße ✓\n", i, m
            else printf "%06d the quick brown fox jumps over the lazy dog, %s\n", i, m } }'
    } >"$W/out/large.$tool.in"
    send_with large "$tool" app -t -i <"$W/out/large.$tool.in"
    expect_rc0 large "$tool" || return 1
    local id
    id=$(find_mail A "$m") || fail "not delivered to the submission server" || return 1
    expect_eq "envelope recipients" ops@contoso.test "$(envelope_rcpts A "$id")" || return 1
    delivered_bytes A "$id" | same_bytes "large.$tool" "$W/out/large.$tool.in" ||
        fail "delivered bytes differ (see out/large.$tool.diff)"
}

case_wrong-sender() {
    local tool=$1 m
    m=$(marker wrong-sender "$tool")
    submit_message "$m" ceo@contoso.test | grep -v '^Bcc: ' >"$W/out/wrong-sender.$tool.in"
    send_with wrong-sender "$tool" wrong-sender -t -i -f ceo@contoso.test <"$W/out/wrong-sender.$tool.in"
    no_mail "$m" || fail "a message from a sender the mailbox may not use was delivered" || return 1
    NOTE="exit $RC"
    case $tool in
    m365send)
        expect_eq "exit code (77 = permission)" 77 "$RC" || return 1
        # The explanation quotes the refused address (the server's reply, or our own check).
        stderr_of wrong-sender "$tool" | grep -F 'ceo@contoso.test' >/dev/null ||
            fail "stderr does not explain the refusal: $(stderr_of wrong-sender "$tool" | head -3)"
        ;;
    *) [[ $RC != 0 ]] || fail "exit 0 although nothing was delivered" ;;
    esac
}

# Relay and direct: a small message with -t.
relay_message() { # MARKER FROM TO
    cat <<EOF
From: Alerts <$2>
To: $3
Subject: interop relay $1
Date: Fri, 27 Nov 2026 21:00:00 +0000
Message-ID: <$1@interop.test>

Body of $1.
EOF
}

# How many TLS sessions instance INST has logged so far.
tls_sessions() { grep -c 'TLS connection established from' "$W/log/postfix-$1.log" || true; }

deliver_via_mx() { # NAME TOOL PROFILE RCPT
    local name=$1 tool=$2 profile=$3 rcpt=$4 m tls_before
    m=$(marker "$name" "$tool")
    relay_message "$m" alerts@contoso.test "$rcpt" >"$W/out/$name.$tool.in"
    tls_before=$(tls_sessions B)
    send_with "$name" "$tool" "$profile" -t -i <"$W/out/$name.$tool.in"
    expect_rc0 "$name" "$tool" || return 1
    # Relay needs it for the certificate; direct send must still use STARTTLS when offered.
    (($(tls_sessions B) > tls_before)) || fail "delivered without STARTTLS" || return 1
    local id
    id=$(find_mail B "$m") || fail "not delivered to the MX endpoint" || return 1
    expect_eq "envelope sender" alerts@contoso.test "$(envelope_from B "$id")" || return 1
    expect_eq "envelope recipients" "$rcpt" "$(envelope_rcpts B "$id")" || return 1
    delivered_bytes B "$id" | same_bytes "$name.$tool" "$W/out/$name.$tool.in" ||
        fail "delivered bytes differ (see out/$name.$tool.diff)"
}

refused_by_mx() { # NAME TOOL PROFILE [RCPT [ENHANCED_CODE]]
    local name=$1 tool=$2 profile=$3 rcpt=${4:-partner@fabrikam.example} code=${5:-5.7.1} m
    m=$(marker "$name" "$tool")
    relay_message "$m" alerts@contoso.test "$rcpt" >"$W/out/$name.$tool.in"
    send_with "$name" "$tool" "$profile" -t -i <"$W/out/$name.$tool.in"
    no_mail "$m" || fail "delivered to $rcpt" || return 1
    NOTE="exit $RC"
    [[ $RC != 0 ]] || fail "exit 0 although the server refused the recipient" || return 1
    if [[ $tool == m365send ]]; then
        # A permanent refusal: not "try again later" (75), not a crash or a timeout.
        case $RC in
        124 | 137) fail "no answer: killed after ${INTEROP_TIMEOUT}s (a hang)" || return 1 ;;
        75 | 70) fail "exit $RC for a permanent refusal" || return 1 ;;
        esac
        stderr_of "$name" "$tool" | grep -F "$code" >/dev/null ||
            fail "stderr does not quote the refusal ($code): $(stderr_of "$name" "$tool" | head -3)"
    fi
}

case_relay-cert() { deliver_via_mx relay-cert "$1" relay partner@fabrikam.example; }
case_relay-nocert() { refused_by_mx relay-nocert "$1" relay-nocert; }
case_relay-foreign-cert() { refused_by_mx relay-foreign-cert "$1" relay-foreign-cert; }
case_direct-internal() { deliver_via_mx direct-internal "$1" direct ops@contoso.test; }

# Direct send to an internal address that does not exist: 550 5.4.1, permanent.
case_direct-unknown-recipient() { refused_by_mx direct-unknown-recipient "$1" direct nobody@contoso.test 5.4.1; }

# A transient refusal (451 4.7.500) with queueing off: m365send must exit 75 (EX_TEMPFAIL) and
# quote the reply, so that the caller (cron, a script) knows to try again.
case_tempfail() {
    local tool=$1 m
    m=$(marker tempfail "$tool")
    relay_message "$m" "$MAILBOX" tempfail@contoso.test >"$W/out/tempfail.$tool.in"
    send_with tempfail "$tool" app -t -i <"$W/out/tempfail.$tool.in"
    no_mail "$m" || fail "delivered although the server deferred the recipient" || return 1
    NOTE="exit $RC"
    case $tool in
    m365send)
        expect_eq "exit code (75 = temporary failure)" 75 "$RC" || return 1
        stderr_of tempfail "$tool" | grep '4\.7\.500' >/dev/null ||
            fail "stderr does not quote 4.7.500: $(stderr_of tempfail "$tool" | head -3)"
        ;;
    *) [[ $RC != 0 ]] || fail "exit 0 although nothing was delivered" ;;
    esac
}

# The durable queue against a real server: a profile with queue = "always" takes the message
# without delivering it (exit 0), `queue list` shows it, `queue run` delivers it.
case_queue() {
    local tool=$1 m
    [[ $tool == m365send ]] || return 2 # msmtp has no queue (msmtpq is a separate script)
    m=$(marker queue "$tool")
    relay_message "$m" "$MAILBOX" ops@contoso.test >"$W/out/queue.$tool.in"
    send_with queue "$tool" app-queue -t -i <"$W/out/queue.$tool.in"
    expect_rc0 queue "$tool" || return 1
    no_mail "$m" || fail "delivered at once although the profile says queue = always" || return 1
    RC=0
    timeout -k 5 "$INTEROP_TIMEOUT" env HOME="$W/home" "$M365SEND" -C "$W/m365send.toml" \
        queue list >"$W/out/queue-list.$tool.out" 2>"$W/out/queue-list.$tool.err" || RC=$?
    expect_rc0 queue-list "$tool" || return 1
    grep -F ops@contoso.test "$W/out/queue-list.$tool.out" >/dev/null ||
        fail "queue list does not show the queued message" || return 1
    RC=0
    timeout -k 5 "$INTEROP_TIMEOUT" env HOME="$W/home" "$M365SEND" -C "$W/m365send.toml" \
        queue run >"$W/out/queue-run.$tool.out" 2>"$W/out/queue-run.$tool.err" || RC=$?
    expect_rc0 queue-run "$tool" || return 1
    local id
    id=$(find_mail A "$m") || fail "queue run did not deliver it" || return 1
    expect_eq "envelope recipients" ops@contoso.test "$(envelope_rcpts A "$id")" || return 1
    delivered_bytes A "$id" | same_bytes "queue.$tool" "$W/out/queue.$tool.in" ||
        fail "delivered bytes differ (see out/queue.$tool.diff)"
}

# Submission with AUTH XOAUTH2 and a ready-made access token (auth.token): the SASL string is
# checked by Dovecot's oauth2 passdb against the introspection stub.
case_oauth-token() {
    local tool=$1 m
    m=$(marker oauth "$tool")
    relay_message "$m" "$MAILBOX" ops@contoso.test >"$W/out/oauth-token.$tool.in"
    send_with oauth-token "$tool" app-oauth -t -i <"$W/out/oauth-token.$tool.in"
    expect_rc0 oauth-token "$tool" || return 1
    local id
    id=$(find_mail A "$m") || fail "not delivered to the submission server" || return 1
    expect_eq "envelope sender" "$MAILBOX" "$(envelope_from A "$id")" || return 1
    grep -F "sasl_method=XOAUTH2, sasl_username=$MAILBOX" "$W/log/postfix-A.log" >/dev/null ||
        fail "Postfix did not log an XOAUTH2 login for $MAILBOX" || return 1
    delivered_bytes A "$id" | same_bytes "oauth-token.$tool" "$W/out/oauth-token.$tool.in" ||
        fail "delivered bytes differ (see out/oauth-token.$tool.diff)"
}

# `--server HOST:PORT` instead of the profile's endpoint (a profile without one).
case_server-option() {
    local tool=$1 m
    [[ $tool == m365send ]] || return 2 # the peer's equivalent (--host/--port) is not compared
    m=$(marker server-option "$tool")
    relay_message "$m" "$MAILBOX" ops@contoso.test >"$W/out/server-option.$tool.in"
    send_with server-option "$tool" app-no-endpoint --server "$INTEROP_HOST:$PORT_SUB" -t -i \
        <"$W/out/server-option.$tool.in"
    expect_rc0 server-option "$tool" || return 1
    local id
    id=$(find_mail A "$m") || fail "not delivered to the submission server" || return 1
    expect_eq "envelope recipients" ops@contoso.test "$(envelope_rcpts A "$id")" || return 1
    delivered_bytes A "$id" | same_bytes "server-option.$tool" "$W/out/server-option.$tool.in" ||
        fail "delivered bytes differ (see out/server-option.$tool.diff)"
}

# A message m365send composes itself: --to/--subject, body from stdin, --attach; read back
# with Python's email parser through the MX endpoint.
case_compose-attach() {
    local tool=$1 m
    [[ $tool == m365send ]] || return 2 # msmtp does not compose messages
    m=$(marker compose "$tool")
    printf 'backup report for %s\nGrüße ✓\n' "$m" >"$W/out/compose-attach.$tool.body"
    head -c 3000 /dev/urandom >"$W/out/backup-$m.bin"
    send_with compose-attach "$tool" relay --to partner@fabrikam.example \
        --subject "interop compose $m" --attach "$W/out/backup-$m.bin" \
        <"$W/out/compose-attach.$tool.body"
    expect_rc0 compose-attach "$tool" || return 1
    local id
    id=$(find_mail B "$m") || fail "not delivered to the MX endpoint" || return 1
    expect_eq "envelope sender" alerts@contoso.test "$(envelope_from B "$id")" || return 1
    expect_eq "envelope recipients" partner@fabrikam.example "$(envelope_rcpts B "$id")" || return 1
    local verdict
    verdict=$(python3 "$HERE/check_composed.py" "$W/mail/B/$id.eml" \
        "$W/out/compose-attach.$tool.body" "$W/out/backup-$m.bin" "interop compose $m" \
        alerts@contoso.test 2>&1) || true
    [[ $verdict == ok ]] || fail "composed message: $verdict"
}

# Checks shared by the callers: delivered to A from the mailbox to ops, subject and body intact.
check_caller_mail() { # NAME TOOL MARKER SUBJECT BODY_FILE
    local name=$1 tool=$2 m=$3 subject=$4 body=$5 id
    id=$(find_mail A "$m") || fail "not delivered to the submission server" || return 1
    expect_eq "envelope sender" "$MAILBOX" "$(envelope_from A "$id")" || return 1
    expect_eq "envelope recipients" ops@contoso.test "$(envelope_rcpts A "$id")" || return 1
    expect_eq "Subject" "$subject" "$(header_of A "$id" Subject)" || return 1
    header_of A "$id" From | grep -F "$MAILBOX" >/dev/null ||
        fail "From header '$(header_of A "$id" From)' is not the mailbox" || return 1
    body_of A "$id" | same_bytes "$name.$tool" "$body" ||
        fail "body differs (see out/$name.$tool.diff)"
}

case_mailx() {
    local tool=$1 m
    m=$(marker mailx "$tool")
    # bsd-mailx runs /usr/sbin/sendmail unless the `sendmail` variable names another program.
    printf 'set sendmail=%s\n' "$W/bin/$tool/sendmail" >"$W/out/mailx.$tool.mailrc"
    printf 'mailx body of %s\nGrüße ✓\n' "$m" >"$W/out/mailx.$tool.body"
    as_sendmail mailx "$tool" app env MAILRC="$W/out/mailx.$tool.mailrc" \
        mailx -s "interop mailx $m" ops@contoso.test <"$W/out/mailx.$tool.body"
    expect_rc0 mailx "$tool" || return 1
    check_caller_mail mailx "$tool" "$m" "interop mailx $m" "$W/out/mailx.$tool.body"
}

case_s-nail() {
    local tool=$1 m
    m=$(marker s-nail "$tool")
    # s-nail runs `sendmail -i -- RCPT` (the `mta` variable); ASCII body: s-nail would MIME-
    # encode 8-bit text in the C locale, which is its business, not the tool's.
    printf 's-nail body of %s\nsecond line\n' "$m" >"$W/out/s-nail.$tool.body"
    as_sendmail s-nail "$tool" app s-nail -:/ -S "mta=$W/bin/$tool/sendmail" \
        -s "interop s-nail $m" ops@contoso.test <"$W/out/s-nail.$tool.body"
    expect_rc0 s-nail "$tool" || return 1
    check_caller_mail s-nail "$tool" "$m" "interop s-nail $m" "$W/out/s-nail.$tool.body"
}

case_git-send-email() {
    local tool=$1 m repo=$W/out/git.$1
    m=$(marker git "$tool")
    rm -rf "$repo"
    mkdir -p "$repo"
    (
        cd "$repo"
        export HOME=$W/home GIT_CONFIG_NOSYSTEM=1
        "$GIT" init -q -b main .
        printf 'one\ntwo\nthree\n' >file.txt
        "$GIT" add file.txt
        "$GIT" commit -q -m "initial"
        printf 'one\n2\nthree\n.\nfour ✓\n' >file.txt
        "$GIT" commit -q -a -m "interop: $m" -m "A real patch sent by git send-email."
        "$GIT" format-patch -q -1 -o patches
    ) || fail "could not make a patch" || return 1
    local patch
    patch=$(ls "$repo"/patches/*.patch)
    awk 'body { print; next } /^$/ { body = 1 }' "$patch" >"$W/out/git-send-email.$tool.body"
    as_sendmail git-send-email "$tool" app env GIT_CONFIG_NOSYSTEM=1 \
        "$GIT" -C "$repo" send-email --sendmail-cmd="$W/bin/$tool/sendmail" \
        --from "Interop App <$MAILBOX>" --to ops@contoso.test --confirm=never \
        --suppress-cc=all --no-validate --no-chain-reply-to --8bit-encoding=UTF-8 "$patch"
    expect_rc0 git-send-email "$tool" || return 1
    check_caller_mail git-send-email "$tool" "$m" "[PATCH] interop: $m" "$W/out/git-send-email.$tool.body"
}

case_php-mail() {
    local tool=$1 m
    m=$(marker php "$tool")
    printf 'PHP body of %s\nGrüße ✓\n' "$m" >"$W/out/php-mail.$tool.body"
    # shellcheck disable=SC2016 # PHP code, expanded by PHP
    # PHP ends the body with its own CRLF (and separates its headers with CRLF): give it the
    # body without the final newline.
    as_sendmail php-mail "$tool" app php -n -d "sendmail_path=$W/bin/$tool/sendmail -t -i" -r '
        $ok = mail("ops@contoso.test", $argv[1], rtrim(file_get_contents($argv[2]), "\n"),
                   ["From" => $argv[3], "Content-Type" => "text/plain; charset=UTF-8"]);
        exit($ok ? 0 : 1);' "interop php $m" "$W/out/php-mail.$tool.body" "$MAILBOX"
    expect_rc0 php-mail "$tool" || return 1
    check_caller_mail php-mail "$tool" "$m" "interop php $m" "$W/out/php-mail.$tool.body"
}

case_cron() {
    local tool=$1 m
    m=$(marker cron "$tool")
    # What Debian cron writes to sendmail's stdin.
    cat >"$W/out/cron.$tool.in" <<EOF
From: root (Cron Daemon)
To: root
Subject: Cron <root@interop> /usr/local/bin/nightly-$m
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: 8bit
X-Cron-Env: <SHELL=/bin/sh>
X-Cron-Env: <HOME=/root>
X-Cron-Env: <PATH=/usr/bin:/bin>
X-Cron-Env: <LOGNAME=root>

nightly job output for $m
Sauvegarde terminée ✓
EOF
    awk 'body { print; next } /^$/ { body = 1 }' "$W/out/cron.$tool.in" >"$W/out/cron.$tool.body"
    # Debian cron's exact argv.
    as_sendmail cron "$tool" cron sendmail -FCronDaemon -i -B8BITMIME -oem root <"$W/out/cron.$tool.in"
    expect_rc0 cron "$tool" || return 1
    local id
    id=$(find_mail B "$m") || fail "not delivered to the MX endpoint" || return 1
    expect_eq "envelope sender" alerts@contoso.test "$(envelope_from B "$id")" || return 1
    expect_eq "envelope recipients (root aliased)" ops@contoso.test "$(envelope_rcpts B "$id")" || return 1
    expect_eq "Subject" "Cron <root@interop> /usr/local/bin/nightly-$m" "$(header_of B "$id" Subject)" || return 1
    header_of B "$id" From | grep -F alerts@contoso.test >/dev/null ||
        fail "From not rewritten to the sender: '$(header_of B "$id" From)'" || return 1
    body_of B "$id" | same_bytes "cron.$tool" "$W/out/cron.$tool.body" ||
        fail "body differs (see out/cron.$tool.diff)"
}

case_swaks-bs() {
    local tool=$1 m
    [[ $tool == m365send ]] || return 2 # msmtp has no -bs
    m=$(marker swaks-bs "$tool")
    printf 'swaks body of %s\nsecond line\n' "$m" >"$W/out/swaks-bs.$tool.body"
    as_sendmail swaks-bs "$tool" app swaks --pipe "$W/bin/$tool/sendmail -bs" \
        --helo client.interop.test --from "$MAILBOX" --to ops@contoso.test \
        --header "Subject: interop swaks $m" --header "From: $MAILBOX" \
        --body "@$W/out/swaks-bs.$tool.body" --timeout "$INTEROP_TIMEOUT"
    expect_rc0 swaks-bs "$tool" || return 1
    local id
    id=$(find_mail A "$m") || fail "not delivered to the submission server" || return 1
    expect_eq "envelope sender" "$MAILBOX" "$(envelope_from A "$id")" || return 1
    expect_eq "envelope recipients" ops@contoso.test "$(envelope_rcpts A "$id")" || return 1
    expect_eq "Subject" "interop swaks $m" "$(header_of A "$id" Subject)" || return 1
    # The body as swaks sent it, from its transcript (swaks adds empty lines of its own).
    awk '/^<- +354/ { data = 1; next }
         data && /^ -> \.\r?$/ { exit }
         data && sub(/^ -> /, "") { sub(/\r$/, ""); if (body) print; else if ($0 == "") body = 1 }' \
        "$W/out/swaks-bs.$tool.out" >"$W/out/swaks-bs.$tool.sent-body"
    grep -F -- "swaks body of $m" "$W/out/swaks-bs.$tool.sent-body" >/dev/null ||
        fail "could not read the body back from swaks's transcript" || return 1
    body_of A "$id" | same_bytes "swaks-bs.$tool" "$W/out/swaks-bs.$tool.sent-body" ||
        fail "body differs (see out/swaks-bs.$tool.diff)"
}

# -bs must answer with the real outcome: a recipient the server defers (451 4.7.500) must
# not be acknowledged as delivered (nor queued: the profile says queue = "never").
case_swaks-bs-tempfail() {
    local tool=$1 m rc
    [[ $tool == m365send ]] || return 2
    m=$(marker swaks-bs-tempfail "$tool")
    as_sendmail swaks-bs-tempfail "$tool" app swaks --pipe "$W/bin/$tool/sendmail -bs" \
        --helo client.interop.test --from "$MAILBOX" --to tempfail@contoso.test \
        --header "Subject: interop swaks $m" --header "From: $MAILBOX" --timeout "$INTEROP_TIMEOUT"
    rc=$RC
    no_mail "$m" || fail "delivered although the server deferred the recipient" || return 1
    [[ $rc != 0 ]] || fail "swaks saw success for a deferred recipient" || return 1
    grep -E '^<\*\* +4[0-9][0-9]' "$W/out/swaks-bs-tempfail.$tool.out" >/dev/null ||
        fail "no 4xx reply in the -bs dialogue (see out/swaks-bs-tempfail.$tool.out)" || return 1
    grep -F '4.7.500' "$W/out/swaks-bs-tempfail.$tool.out" >/dev/null ||
        fail "the -bs reply does not carry the server's 4.7.500" || return 1
    NOTE="swaks exit $rc"
}

run_cases() {
    local c tool rc
    for c in $ALL_CASES; do
        if [[ -n $INTEROP_CASES && " $INTEROP_CASES " != *" $c "* ]]; then continue; fi
        for tool in $INTEROP_TOOLS; do
            REASON='' NOTE=
            rc=0
            if ((SECONDS - START > INTEROP_BUDGET)); then
                REASON="not run: the suite's time budget (${INTEROP_BUDGET}s) was used up"
                rc=1
            elif tool_ready "$tool"; then
                "case_$c" "$tool" || rc=$?
            else
                rc=1
            fi
            case $rc in
            0) RESULT[$c,$tool]="PASS${NOTE:+ ($NOTE)}" ;;
            2) RESULT[$c,$tool]=n/a ;;
            *)
                RESULT[$c,$tool]="FAIL: ${REASON:-failed}"
                FAILED=$((FAILED + 1))
                ;;
            esac
            printf '%-24s %-9s %s\n' "$c" "$tool" "${RESULT[$c,$tool]}"
        done
    done
}

# ---------------------------------------------------------------------------------------------
# Harness self-test with swaks: proves the servers behave like Microsoft 365 before any case
# runs, so a case failure is about the tool, not the harness.

HARNESS_FAILED=0
HARNESS_PASSED=0
check_harness() { # NAME EXPECT(ok|refused) GREP_PATTERN SWAKS_ARGS...
    local name=$1 expect=$2 pattern=$3 rc=0
    shift 3
    timeout -k 5 30 swaks --server 127.0.0.1 --helo client.interop.test \
        --timeout 20 "$@" >"$W/out/harness.$name.log" 2>&1 || rc=$?
    local ok=1
    if [[ $expect == ok ]]; then [[ $rc == 0 ]] || ok=0; else [[ $rc != 0 ]] || ok=0; fi
    if [[ -n $pattern ]] && ! grep -q -E -- "$pattern" "$W/out/harness.$name.log"; then ok=0; fi
    if [[ $ok == 1 ]]; then
        printf '%-44s PASS\n' "harness: $name"
        HARNESS_PASSED=$((HARNESS_PASSED + 1))
        return 0
    fi
    printf '%-44s FAIL (swaks exit %s; log out/harness.%s.log)\n' "harness: $name" "$rc" "$name"
    tail -8 "$W/out/harness.$name.log" | sed 's/^/    /'
    HARNESS_FAILED=$((HARNESS_FAILED + 1))
    return 1
}

check_cmd() { # NAME EXPECT(ok|refused) GREP_PATTERN COMMAND...
    local name=$1 expect=$2 pattern=$3 rc=0 ok=1
    shift 3
    timeout -k 5 30 "$@" >"$W/out/harness.$name.log" 2>&1 || rc=$?
    if [[ $expect == ok ]]; then [[ $rc == 0 ]] || ok=0; else [[ $rc != 0 ]] || ok=0; fi
    if [[ -n $pattern ]] && ! grep -q -E -- "$pattern" "$W/out/harness.$name.log"; then ok=0; fi
    if [[ $ok == 1 ]]; then
        printf '%-44s PASS\n' "harness: $name"
        HARNESS_PASSED=$((HARNESS_PASSED + 1))
        return 0
    fi
    printf '%-44s FAIL (exit %s; log out/harness.%s.log)\n' "harness: $name" "$rc" "$name"
    tail -8 "$W/out/harness.$name.log" | sed 's/^/    /'
    HARNESS_FAILED=$((HARNESS_FAILED + 1))
    return 1
}

check_tls() { # NAME EXPECT(ok|refused) S_CLIENT_ARGS...: STARTTLS handshake with instance A
    local name=$1 expect=$2 rc=0 ok=1
    shift 2
    echo QUIT | timeout -k 5 20 openssl s_client -connect "127.0.0.1:$PORT_SUB" -starttls smtp \
        -CAfile "$W/pki/ca.crt" -verify_return_error "$@" >"$W/out/harness.$name.log" 2>&1 || rc=$?
    if [[ $expect == ok ]]; then [[ $rc == 0 ]] || ok=0; else [[ $rc != 0 ]] || ok=0; fi
    if [[ $ok == 1 ]]; then
        printf '%-44s PASS\n' "harness: $name"
        HARNESS_PASSED=$((HARNESS_PASSED + 1))
        return 0
    fi
    printf '%-44s FAIL (openssl exit %s; log out/harness.%s.log)\n' "harness: $name" "$rc" "$name"
    tail -8 "$W/out/harness.$name.log" | sed 's/^/    /'
    HARNESS_FAILED=$((HARNESS_FAILED + 1))
    return 1
}

harness_delivered() { # NAME INST MARKER FROM RCPT
    local id
    if id=$(find_mail "$2" "$3") && [[ $(envelope_from "$2" "$id") == "$4" &&
        $(envelope_rcpts "$2" "$id") == "$5" ]]; then
        printf '%-44s PASS\n' "harness: $1 read back"
        HARNESS_PASSED=$((HARNESS_PASSED + 1))
    else
        printf '%-44s FAIL (not read back with envelope %s -> %s)\n' "harness: $1 read back" "$4" "$5"
        HARNESS_FAILED=$((HARNESS_FAILED + 1))
    fi
}

selftest() {
    local p=$W/pki m auth=(--auth-user "$MAILBOX" --auth-password "$MAILBOX_PASSWORD")
    say "harness self-test with swaks"
    # A: no AUTH before STARTTLS, and no mail without AUTH.
    check_harness A-no-auth-before-tls refused 'did not advertise' --port "$PORT_SUB" --to ops@contoso.test \
        --auth PLAIN "${auth[@]}" --quit-after AUTH || true
    check_harness A-tls-is-required refused '530 5\.7\.0' --port "$PORT_SUB" \
        --from "$MAILBOX" --to ops@contoso.test --quit-after RCPT || true
    # TLS versions, with openssl s_client (SECLEVEL=0 so that the client side would offer 1.1).
    check_tls A-tls1.1-refused refused -tls1_1 -cipher 'DEFAULT@SECLEVEL=0' || true
    check_tls A-tls1.2-accepted ok -tls1_2 || true
    check_tls A-tls1.3-accepted ok -tls1_3 || true
    check_harness A-unauthenticated-refused refused '5\.7\.1' --port "$PORT_SUB" -tls \
        --tls-ca-path "$p/ca.crt" --tls-verify --from "$MAILBOX" --to ops@contoso.test \
        --quit-after RCPT || true
    check_harness A-bad-password refused '535 5\.7\.8' --port "$PORT_SUB" -tls \
        --tls-ca-path "$p/ca.crt" --auth LOGIN --auth-user "$MAILBOX" --auth-password wrong \
        --quit-after AUTH || true
    m=$(marker harness-A swaks)
    check_harness A-login-and-send ok '235 2\.7\.0' --port "$PORT_SUB" -tls --tls-verify \
        --tls-ca-path "$p/ca.crt" --auth LOGIN "${auth[@]}" --from "$MAILBOX" \
        --to ops@contoso.test,partner@fabrikam.example --header "Subject: $m" --header "From: $MAILBOX" &&
        harness_delivered A-login-and-send A "$m" "$MAILBOX" "ops@contoso.test partner@fabrikam.example"
    check_harness A-plain-also-works ok '235 2\.7\.0' --port "$PORT_SUB" -tls \
        --tls-ca-path "$p/ca.crt" --auth PLAIN "${auth[@]}" --quit-after AUTH || true
    check_harness A-wrong-envelope-sender refused '553 5\.7\.1' --port "$PORT_SUB" -tls \
        --tls-ca-path "$p/ca.crt" --auth LOGIN "${auth[@]}" --from ceo@contoso.test \
        --to ops@contoso.test --quit-after RCPT || true
    check_harness A-wrong-from-header refused '550 5\.7\.60' --port "$PORT_SUB" -tls \
        --tls-ca-path "$p/ca.crt" --auth LOGIN "${auth[@]}" --from "$MAILBOX" \
        --to ops@contoso.test --header "From: CEO <ceo@contoso.test>" || true
    check_cmd A-xoauth2-good-token ok '^235' python3 "$HERE/smtp_xoauth2.py" "$PORT_SUB" \
        "$p/ca.crt" "$MAILBOX" "$(cat "$W/secrets/app.token")" || true
    check_cmd A-xoauth2-bad-token refused '^535' python3 "$HERE/smtp_xoauth2.py" "$PORT_SUB" \
        "$p/ca.crt" "$MAILBOX" not-the-token || true
    check_harness A-transient-recipient refused '451 4\.7\.500' --port "$PORT_SUB" -tls \
        --tls-ca-path "$p/ca.crt" --auth LOGIN "${auth[@]}" --from "$MAILBOX" \
        --to tempfail@contoso.test --quit-after RCPT || true
    # B: certificate connector.
    m=$(marker harness-B-cert swaks)
    check_harness B-relay-with-our-cert ok '' --port "$PORT_MX" -tls --tls-verify \
        --tls-ca-path "$p/ca.crt" --tls-cert "$p/client.crt" --tls-key "$p/client.key" \
        --from alerts@contoso.test --to partner@fabrikam.example --header "Subject: $m" &&
        harness_delivered B-relay-with-our-cert B "$m" alerts@contoso.test partner@fabrikam.example
    check_harness B-relay-without-cert refused '554 5\.7\.1.*Relay access denied' --port "$PORT_MX" -tls \
        --tls-ca-path "$p/ca.crt" --from alerts@contoso.test --to partner@fabrikam.example \
        --quit-after RCPT || true
    check_harness B-relay-foreign-cert refused '554 5\.7\.1.*Relay access denied' --port "$PORT_MX" -tls \
        --tls-ca-path "$p/ca.crt" --tls-cert "$p/foreign.crt" --tls-key "$p/foreign.key" \
        --from alerts@contoso.test --to partner@fabrikam.example --quit-after RCPT || true
    check_harness B-unknown-internal-recipient refused '550 5\.4\.1' --port "$PORT_MX" \
        --from alerts@contoso.test --to nobody@contoso.test --quit-after RCPT || true
    m=$(marker harness-B-direct swaks)
    check_harness B-internal-without-cert ok '' --port "$PORT_MX" --from alerts@contoso.test \
        --to ops@contoso.test --header "Subject: $m" &&
        harness_delivered B-internal-without-cert B "$m" alerts@contoso.test ops@contoso.test
    return 0
}

# ---------------------------------------------------------------------------------------------
# Report

print_table() {
    local c tool line
    echo
    echo "Interop results (work directory $W)"
    printf '%-24s' case
    for tool in $INTEROP_TOOLS; do printf ' | %-32s' "$tool"; done
    echo
    printf '%-24s' "------------------------"
    for tool in $INTEROP_TOOLS; do printf ' | %-32s' "--------------------------------"; done
    echo
    for c in $ALL_CASES; do
        [[ -n ${RESULT[$c,${INTEROP_TOOLS%% *}]+x} ]] || continue
        printf '%-24s' "$c"
        for tool in $INTEROP_TOOLS; do
            line=${RESULT[$c,$tool]:-}
            ((${#line} > 32)) && line=${line:0:29}...
            printf ' | %-32s' "$line"
        done
        echo
    done
    echo
    local passed=0 failed=0 skipped=0 k
    for k in "${!RESULT[@]}"; do
        case ${RESULT[$k]} in PASS*) passed=$((passed + 1)) ;; n/a) skipped=$((skipped + 1)) ;;
        *) failed=$((failed + 1)) ;; esac
    done
    if ((FAILED > 0)); then
        echo "Failures in full:"
        for c in $ALL_CASES; do
            for tool in $INTEROP_TOOLS; do
                line=${RESULT[$c,$tool]:-}
                [[ $line == FAIL* ]] && printf '  %s/%s: %s\n' "$c" "$tool" "$line"
            done
        done
        echo
    fi
    ((HARNESS_FAILED > 0)) && echo "harness: $HARNESS_FAILED self-test check(s) failed"
    passed=$((passed + HARNESS_PASSED))
    failed=$((failed + HARNESS_FAILED))
    echo "interop: $passed passed, $failed failed, $skipped skipped"
}

# ---------------------------------------------------------------------------------------------

START=$SECONDS
main() {
    [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts Postfix)"
    TMPDIR_APT_LOG=$(mktemp /tmp/m365send-interop-apt.XXXXXX)
    install_packages
    rm -f "$TMPDIR_APT_LOG"
    setup_workdir
    PORT_SUB=$(free_port)
    PORT_MX=$(free_port)
    while [[ $PORT_MX == "$PORT_SUB" ]]; do PORT_MX=$(free_port); done
    PORT_OAUTH=$(free_port)
    while [[ $PORT_OAUTH == "$PORT_SUB" || $PORT_OAUTH == "$PORT_MX" ]]; do PORT_OAUTH=$(free_port); done
    make_pki
    write_capture
    start_oauth_stub
    start_dovecot
    setup_postfix_submission
    setup_postfix_mx
    start_postfix A "$PORT_SUB"
    start_postfix B "$PORT_MX"
    setup_tools
    selftest
    echo
    run_cases
    print_table
    say "finished in $((SECONDS - START))s"
    ((FAILED == 0 && HARNESS_FAILED == 0))
}

# Sourced (tests/packaging/run.sh uses the helpers above), it defines and runs nothing more.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
