#!/bin/bash
# Benchmark (not a test): round trips per message, queue drain rate and peak memory of
# m365send against msmtp, through a user-space latency proxy (examples/latency_proxy.rs)
# in front of the fake Microsoft 365 server — and, with --postfix, a real Postfix for relay.
# See benches/rtt.rs for what is measured and printed.
#
#   scripts/bench-rtt.sh [--postfix] [--rtt-ms 50] [--runs 9] [--queue 200]
#                        [--connections 1,2,4,8] [--skip-rss | --rss-only] [--rss-runs 3]
#
# --postfix   relay goes to a loopback-only Postfix started here, as tests/interop/run.sh
#             starts its MX instance: its own config, queue and data directories in a
#             temporary directory, 127.0.0.1 on a free high port, STARTTLS with a private CA,
#             no AUTH, every message discarded, no DNS lookups; stopped and removed at the end.
#             Needs root and `apt-get install postfix msmtp openssl`.
#
# The latency proxy also runs on its own, in front of any local server:
#   target/release/examples/latency_proxy --to 127.0.0.1:PORT --one-way-ms 25
set -euo pipefail
cd "$(dirname "$0")/.."

POSTFIX=0
ARGS=()
for a in "$@"; do
    case $a in
        --postfix) POSTFIX=1 ;;
        *) ARGS+=("$a") ;;
    esac
done

command -v msmtp >/dev/null || { echo "bench-rtt: msmtp not found (apt-get install msmtp)" >&2; exit 2; }
cargo build --release --quiet --bin m365send --example latency_proxy
export M365SEND_BIN=$PWD/target/release/m365send

W=
cleanup() {
    if [[ -n $W ]]; then
        [[ -f $W/etc/main.cf ]] && postfix -c "$W/etc" stop >/dev/null 2>&1 || true
        [[ -n ${KEEP:-} ]] || rm -rf "$W"
    fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_postfix() {
    command -v postfix >/dev/null || { echo "bench-rtt: postfix not found (apt-get install postfix)" >&2; exit 2; }
    W=$(mktemp -d /tmp/m365send-bench-rtt.XXXXXX)
    chmod 0755 "$W"
    mkdir -p "$W/etc" "$W/queue" "$W/data" "$W/pki"
    chown postfix:postfix "$W/data"
    chmod 0700 "$W/data"
    (
        cd "$W/pki"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=m365send bench CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
        printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out server.crt 2>/dev/null
        chmod 0644 ca.crt
    )
    PORT=$(free_port)
    d() { postconf -c /etc/postfix -dh "$1" 2>/dev/null || echo "$2"; }
    cat >"$W/etc/main.cf" <<EOF
# m365send bench-rtt: a relay on 127.0.0.1 that discards what it accepts. Nothing system-wide.
compatibility_level = 3.6
queue_directory = $W/queue
data_directory = $W/data
command_directory = $(d command_directory /usr/sbin)
daemon_directory = $(d daemon_directory /usr/lib/postfix/sbin)
shlib_directory = $(d shlib_directory /usr/lib/postfix)
meta_directory = $(d meta_directory /etc/postfix)
mail_owner = postfix
setgid_group = postdrop
maillog_file = $W/postfix.log
maillog_file_prefixes = $W
myhostname = mx.bench.test
mydomain = bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
relay_domains = contoso.com
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
alias_maps =
alias_database =
local_recipient_maps =
biff = no
default_transport = discard:bench
relay_transport = discard:bench
default_process_limit = 20
message_size_limit = 209715200
smtpd_tls_chain_files = $W/pki/server.key, $W/pki/server.crt
smtpd_tls_security_level = may
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_received_header = no
EOF
    cat >"$W/etc/master.cf" <<EOF
127.0.0.1:$PORT inet n       -       n       -       -       smtpd
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
EOF
    postfix -c "$W/etc" check >"$W/check.log" 2>&1 || { cat "$W/check.log" >&2; exit 2; }
    postfix -c "$W/etc" start >>"$W/check.log" 2>&1 || { cat "$W/check.log" "$W/postfix.log" >&2; exit 2; }
    for _ in $(seq 1 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            echo "bench-rtt: Postfix $(postconf -dh mail_version) listening on 127.0.0.1:$PORT"
            ARGS+=(--relay-server "127.0.0.1:$PORT" --relay-ca "$W/pki/ca.crt")
            return
        fi
        sleep 0.2
    done
    cat "$W/postfix.log" >&2
    echo "bench-rtt: Postfix did not start" >&2
    exit 2
}

if [[ $POSTFIX == 1 ]]; then
    start_postfix
fi
cargo bench --quiet --bench rtt -- "${ARGS[@]}"
