#!/usr/bin/env bash
# Portcullis vs. pgbouncer vs. direct PostgreSQL: pgbench -S over TLS, interleaved.
#
# Usage: bench/run.sh            (full run: DURATION=10 ROUNDS=3, about 14 minutes)
#        QUICK=1 bench/run.sh    (smoke run: DURATION=3 ROUNDS=1)
#
# Knobs (environment):
#   DURATION=10        seconds per pgbench run
#   ROUNDS=3           rounds per (mode, clients); the table shows medians over rounds
#   CLIENTS="1 8 32"   client counts (space- or comma-separated)
#   MODES="simple extended prepared"   pgbench -M protocol modes
#   SCALE=10           pgbench -i scale factor
#   WARMUP=5           seconds of an unrecorded pgbench -S run against PostgreSQL first (0: none)
#   QUICK=1            DURATION=3 ROUNDS=1 (explicit DURATION/ROUNDS still win)
#   PORTCULLIS_BIN     proxy binary (default ${CARGO_TARGET_DIR:-target}/release/portcullis;
#                      built with `cargo build --release -p portcullis` when missing)
#   PG_BINDIR          PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
#   PGBOUNCER_BIN      pgbouncer (default: on PATH or /usr/sbin; apt-get installed when root)
#   RESULTS_DIR        where the CSV files go (default bench/results)
#   KEEP_TMP=1         keep the temporary directory (configs, server logs) on exit
#   THREADS=1          Portcullis worker threads (PORTCULLIS_THREADS); 1 matches pgbouncer's
#                      single thread on this 2-core host, 0 = one per CPU
#   WORKLOAD=select    select: pgbench -S (builtin select-only) on the pgbench tables, with a
#                      statement-class-only policy. customers: a pgbench script selecting a
#                      quickstart customer by random id (examples/quickstart's schema, data and
#                      policy directory), run directly, through Portcullis as the dba (admin:
#                      open, nothing rewritten), through Portcullis as support_acme (target
#                      "enforced": tenant row filter and masks on every statement) and through
#                      pgbouncer, interleaved
#   AUDIT=1            add the target "audited": a second Portcullis, configured like the first
#                      but with an [audit] file sink (json, filter all) in the temp dir, so that
#                      every statement (and login, session end) is sealed into the hash chain and
#                      fsynced; its runs are interleaved with the others and a table prints the
#                      ratios audited/unaudited and audited/direct, CPU per statement, and the
#                      audit events written per statement (seq delta of the chain; < 1 = loss)
#   BASELINE_BIN=PATH  add the target "baseline": another Portcullis binary (e.g. a build of the
#                      previous commit) with the same configuration on its own port, interleaved
#                      with the others, and a table of this build against it: TPS ratio and the
#                      CPU per statement of the proxy, PostgreSQL and pgbench behind each. For
#                      changes smaller than the run-to-run noise of separate runs.
#
# Everything runs on 127.0.0.1 on free ports in a temporary directory that is removed on exit
# (also on Ctrl-C). The machine's own PostgreSQL is not touched.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION="${DURATION:-3}"
    ROUNDS="${ROUNDS:-1}"
fi
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="$(echo "${CLIENTS:-1 8 32}" | tr ',' ' ')"
MODES="$(echo "${MODES:-simple extended prepared}" | tr ',' ' ')"
SCALE="${SCALE:-10}"
WARMUP="${WARMUP:-5}"
PG_BINDIR="${PG_BINDIR:-/usr/lib/postgresql/15/bin}"
PORTCULLIS_BIN="${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-target}/release/portcullis}"
RESULTS_DIR="${RESULTS_DIR:-$REPO/bench/results}"
WORKLOAD="${WORKLOAD:-select}"
case "$WORKLOAD" in
select) TARGETS=(direct portcullis pgbouncer) ;;
customers) TARGETS=(direct portcullis enforced pgbouncer) ;;
*) echo "WORKLOAD: unknown workload '$WORKLOAD' (select, customers)" >&2; exit 2 ;;
esac
AUDIT="${AUDIT:-0}"
case "$AUDIT" in
0) ;;
1) TARGETS=("${TARGETS[0]}" portcullis audited "${TARGETS[@]:2}") ;;
*) echo "AUDIT: 0 or 1, not '$AUDIT'" >&2; exit 2 ;;
esac
BASELINE_BIN="${BASELINE_BIN:-}"
if [[ -n "$BASELINE_BIN" ]]; then
    [[ -x "$BASELINE_BIN" ]] || { echo "BASELINE_BIN: $BASELINE_BIN is not an executable" >&2; exit 2; }
    TARGETS=("${TARGETS[0]}" portcullis baseline "${TARGETS[@]:2}")
fi
CLK_TCK="$(getconf CLK_TCK)"

for m in $MODES; do
    case "$m" in simple | extended | prepared) ;; *) echo "MODES: unknown pgbench mode '$m'" >&2; exit 2 ;; esac
done
for n in $CLIENTS $DURATION $ROUNDS $SCALE $WARMUP; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "not a number: '$n' (CLIENTS, DURATION, ROUNDS, SCALE, WARMUP)" >&2; exit 2; }
done

# Connection settings from the caller's environment must not leak into our pgbench/psql runs.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE \
    PGSSLMODE PGSSLCERT PGSSLKEY PGSSLROOTCERT PGCHANNELBINDING PGOPTIONS PGAPPNAME || true

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

IS_ROOT=0
[[ "$(id -u)" == 0 ]] && IS_ROOT=1
# initdb, postgres and pgbouncer refuse to run as root: run them as the postgres OS user.
as_pg() {
    if ((IS_ROOT)); then runuser -u postgres -- "$@"; else "$@"; fi
}

# ---------------------------------------------------------------- cleanup
TMP=""
PG_STARTED=0
PORTCULLIS_PID=""
AUDITED_PID=""
BASELINE_PID=""
PGBOUNCER_PID=""
PGBENCH_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n "$PGBENCH_PID" ]] && kill "$PGBENCH_PID" 2>/dev/null || true
    for p in "$PORTCULLIS_PID" "$AUDITED_PID" "$BASELINE_PID"; do
        if [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    if [[ -n "$PGBOUNCER_PID" ]] && kill -0 "$PGBOUNCER_PID" 2>/dev/null; then
        kill -INT "$PGBOUNCER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$PGBOUNCER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PGBOUNCER_PID" 2>/dev/null || true
    fi
    if ((PG_STARTED)); then
        as_pg "$PG_BINDIR/pg_ctl" stop -s -w -t 30 -m immediate -D "$TMP/pg/data" >/dev/null 2>&1 || true
    fi
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "failed: line $LINENO: $BASH_COMMAND"' ERR
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------- prerequisites
for p in initdb pg_ctl postgres; do
    [[ -x "$PG_BINDIR/$p" ]] || die "$PG_BINDIR/$p not found (apt-get install postgresql-15, or set PG_BINDIR)"
done
for p in pgbench psql openssl ss; do
    command -v "$p" >/dev/null || die "$p not found on PATH"
done
if ((IS_ROOT)); then
    getent passwd postgres >/dev/null || die "running as root but there is no 'postgres' OS user to run PostgreSQL and pgbouncer as"
fi

PGBOUNCER_BIN="${PGBOUNCER_BIN:-$(command -v pgbouncer || true)}"
[[ -z "$PGBOUNCER_BIN" && -x /usr/sbin/pgbouncer ]] && PGBOUNCER_BIN=/usr/sbin/pgbouncer
if [[ -z "$PGBOUNCER_BIN" ]]; then
    ((IS_ROOT)) || die "pgbouncer not found; install it (Debian: apt-get install pgbouncer) or set PGBOUNCER_BIN"
    log "pgbouncer not found; apt-get install -y pgbouncer"
    DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null || die "apt-get install pgbouncer failed"
    PGBOUNCER_BIN=/usr/sbin/pgbouncer
fi

if [[ ! -x "$PORTCULLIS_BIN" ]]; then
    log "$PORTCULLIS_BIN not found; cargo build --release -p portcullis"
    cargo build --release -p portcullis
    [[ -x "$PORTCULLIS_BIN" ]] || die "cargo build did not produce $PORTCULLIS_BIN (set PORTCULLIS_BIN)"
fi
PORTCULLIS_BIN="$(cd "$(dirname "$PORTCULLIS_BIN")" && pwd)/$(basename "$PORTCULLIS_BIN")"

# ---------------------------------------------------------------- temp dir, ports, secrets
TMP="$(mktemp -d /tmp/portcullis-bench.XXXXXX)"
chmod 0711 "$TMP"
mkdir -p "$TMP/pg" "$TMP/pgbouncer" "$TMP/portcullis" "$TMP/tls" "$TMP/out"
if ((IS_ROOT)); then chown postgres: "$TMP/pg" "$TMP/pgbouncer"; fi
chmod 0700 "$TMP/pg" "$TMP/pgbouncer" "$TMP/portcullis" "$TMP/tls"

USED_PORTS=" "
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if [[ -z "$(ss -Htan "sport = :$p")" ]]; then
            USED_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    die "no free TCP port found"
}
PG_PORT="$(free_port)"
PORTCULLIS_PORT="$(free_port)"
AUDITED_PORT="$(free_port)"
BASELINE_PORT="$(free_port)"
PGBOUNCER_PORT="$(free_port)"

BENCH_PASSWORD="$(openssl rand -hex 16)"

wait_port() { # port what pid
    for _ in $(seq 100); do
        [[ -n "$(ss -Htln "sport = :$1")" ]] && return 0
        [[ -n "${3:-}" ]] && ! kill -0 "$3" 2>/dev/null && return 1
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- TLS certificate
log "self-signed certificate (RSA 2048, CN=localhost), shared by all three targets"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TMP/tls/server.key" -out "$TMP/tls/server.crt" >/dev/null 2>&1 ||
    die "openssl could not create the certificate"
copy_private() { # src dst: a private copy owned by the postgres OS user
    install -m 0600 "$1" "$2"
    if ((IS_ROOT)); then chown postgres: "$2"; fi
}

# ---------------------------------------------------------------- PostgreSQL
log "initdb ($PG_BINDIR) into $TMP/pg/data"
as_pg "$PG_BINDIR/initdb" -D "$TMP/pg/data" -U postgres -E UTF8 --locale=C --no-sync \
    --auth-local=trust --auth-host=scram-sha-256 >"$TMP/pg/initdb.log" 2>&1 ||
    { cat "$TMP/pg/initdb.log" >&2; die "initdb failed"; }
copy_private "$TMP/tls/server.crt" "$TMP/pg/data/server.crt"
copy_private "$TMP/tls/server.key" "$TMP/pg/data/server.key"
cat >>"$TMP/pg/data/postgresql.conf" <<EOF

# Added by bench/run.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/pg'
max_connections = 200
shared_buffers = 256MB
# Throwaway data: fsync off only speeds up pgbench -i; pgbench -S never writes.
fsync = off
synchronous_commit = off
full_page_writes = off
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
password_encryption = 'scram-sha-256'
EOF
log "starting PostgreSQL on 127.0.0.1:$PG_PORT (ssl=on, fsync=off)"
PG_STARTED=1
as_pg "$PG_BINDIR/pg_ctl" start -s -w -t 60 -D "$TMP/pg/data" -l "$TMP/pg/postgres.log" >/dev/null ||
    { tail -20 "$TMP/pg/postgres.log" >&2; die "PostgreSQL did not start"; }

PSQL_ADMIN=(psql -X -q -v ON_ERROR_STOP=1 -h "$TMP/pg" -p "$PG_PORT" -U postgres)
"${PSQL_ADMIN[@]}" -d postgres -c "CREATE ROLE bench LOGIN PASSWORD '$BENCH_PASSWORD'" \
    -c "CREATE DATABASE bench OWNER bench" >/dev/null
BENCH_VERIFIER="$("${PSQL_ADMIN[@]}" -d postgres -At -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'")"
[[ "$BENCH_VERIFIER" == SCRAM-SHA-256\$* ]] || die "role bench has no SCRAM verifier"

log "pgbench -i -s $SCALE"
pgbench -i -s "$SCALE" -q -h "$TMP/pg" -p "$PG_PORT" -U bench bench >"$TMP/out/init.log" 2>&1 ||
    { cat "$TMP/out/init.log" >&2; die "pgbench -i failed"; }
if [[ "$WORKLOAD" == customers ]]; then
    log "loading examples/quickstart (schema, data) into the bench database"
    # As bench, so that the proxy's upstream user owns what it reads.
    "${PSQL_ADMIN[@]}" -q -v ON_ERROR_STOP=1 -d bench -c "SET ROLE bench" \
        -f "$REPO/examples/quickstart/schema.sql" -f "$REPO/examples/quickstart/data.sql" >/dev/null ||
        die "loading the quickstart data failed"
    # One customer by random id: 300 customers, a third of them tenant 1's (the rest are
    # filtered away for support_acme, which still costs the statement).
    printf '%s\n' '\set id random(1, 300)' \
        'SELECT id, name, email, ssn, card_number, birth_date FROM customers WHERE id = :id;' \
        >"$TMP/customers.sql"
    PGBENCH_WORKLOAD=(-f "$TMP/customers.sql")
    SANITY_TABLE=customers
else
    PGBENCH_WORKLOAD=(-S)
    SANITY_TABLE=pgbench_branches
fi
"${PSQL_ADMIN[@]}" -d bench -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null

# ---------------------------------------------------------------- Portcullis
printf '%s\n' "$BENCH_PASSWORD" >"$TMP/portcullis/upstream.password"
chmod 0600 "$TMP/portcullis/upstream.password"
printf '%s\n' "$BENCH_PASSWORD" |
    "$PORTCULLIS_BIN" user add bench --file "$TMP/portcullis/users.toml" --role dba >/dev/null ||
    die "portcullis user add failed"
printf '%s\n' "$BENCH_PASSWORD" |
    "$PORTCULLIS_BIN" user add bench_support --file "$TMP/portcullis/users.toml" --role support \
        --attr tenant=1 >/dev/null || die "portcullis user add failed"
if [[ "$WORKLOAD" == customers ]]; then
    POLICY_SECTION="[policy]
dir = \"$REPO/examples/quickstart\"

[policy.roles.dba]
allow = [\"all\"]

[policy.roles.support]
allow = [\"read\", \"write\", \"session\", \"transaction\"]"
else
    POLICY_SECTION="[policy.roles.dba]
allow = [\"all\"]"
fi
cat >"$TMP/portcullis/portcullis.toml" <<EOF
# Written by bench/run.sh
[listen]
address = "127.0.0.1:$PORTCULLIS_PORT"
require_tls = true
max_connections = 500

[tls]
cert = "$TMP/tls/server.crt"
key = "$TMP/tls/server.key"

[auth]
users_file = "users.toml"

[upstream]
host = "127.0.0.1"
port = $PG_PORT
user = "bench"
password = { file = "upstream.password" }
sslmode = "disable"

[limits]
shutdown_grace_secs = 1

$POLICY_SECTION
EOF
log "starting Portcullis ($PORTCULLIS_BIN) on 127.0.0.1:$PORTCULLIS_PORT"
PORTCULLIS_THREADS="${THREADS:-1}" "$PORTCULLIS_BIN" serve --config "$TMP/portcullis/portcullis.toml" >"$TMP/portcullis/portcullis.log" 2>&1 &
PORTCULLIS_PID=$!
wait_port "$PORTCULLIS_PORT" portcullis "$PORTCULLIS_PID" ||
    { tail -20 "$TMP/portcullis/portcullis.log" >&2; die "Portcullis did not start"; }

AUDIT_FILE="$TMP/audit/audit.jsonl"
if ((AUDIT)); then
    # The same proxy on its own port, with every event sealed into the hash chain and
    # appended (fsync per batch) to a JSON-lines file on the temp dir's disk. Rotation at
    # 1 GiB keeping one rotated file bounds the disk used by a long run to about 2 GiB.
    mkdir -p "$TMP/audit"
    chmod 0700 "$TMP/audit"
    sed "s/^address = \"127.0.0.1:$PORTCULLIS_PORT\"\$/address = \"127.0.0.1:$AUDITED_PORT\"/" \
        "$TMP/portcullis/portcullis.toml" >"$TMP/portcullis/portcullis-audited.toml"
    grep -q "127.0.0.1:$AUDITED_PORT" "$TMP/portcullis/portcullis-audited.toml" ||
        die "could not derive the audited proxy's configuration"
    cat >>"$TMP/portcullis/portcullis-audited.toml" <<EOF

[audit]
instance = "bench"
state_dir = "$TMP/audit/state"

[[audit.sinks]]
name = "local"
kind = "file"
format = "json"
filter = "all"
[audit.sinks.file]
path = "$AUDIT_FILE"
max_bytes = 1073741824
retain_count = 1
EOF
    log "starting audited Portcullis on 127.0.0.1:$AUDITED_PORT (file sink $AUDIT_FILE)"
    PORTCULLIS_THREADS="${THREADS:-1}" "$PORTCULLIS_BIN" serve --config "$TMP/portcullis/portcullis-audited.toml" \
        >"$TMP/portcullis/portcullis-audited.log" 2>&1 &
    AUDITED_PID=$!
    wait_port "$AUDITED_PORT" audited "$AUDITED_PID" ||
        { tail -20 "$TMP/portcullis/portcullis-audited.log" >&2; die "audited Portcullis did not start"; }
fi

if [[ -n "$BASELINE_BIN" ]]; then
    # The other build, configured exactly like the first but for its port.
    sed "s/^address = \"127.0.0.1:$PORTCULLIS_PORT\"\$/address = \"127.0.0.1:$BASELINE_PORT\"/" \
        "$TMP/portcullis/portcullis.toml" >"$TMP/portcullis/portcullis-baseline.toml"
    grep -q "127.0.0.1:$BASELINE_PORT" "$TMP/portcullis/portcullis-baseline.toml" ||
        die "could not derive the baseline proxy's configuration"
    log "starting baseline Portcullis ($BASELINE_BIN) on 127.0.0.1:$BASELINE_PORT"
    PORTCULLIS_THREADS="${THREADS:-1}" "$BASELINE_BIN" serve --config "$TMP/portcullis/portcullis-baseline.toml" \
        >"$TMP/portcullis/portcullis-baseline.log" 2>&1 &
    BASELINE_PID=$!
    wait_port "$BASELINE_PORT" baseline "$BASELINE_PID" ||
        { tail -20 "$TMP/portcullis/portcullis-baseline.log" >&2; die "baseline Portcullis did not start"; }
fi

# ---------------------------------------------------------------- pgbouncer
copy_private "$TMP/tls/server.crt" "$TMP/pgbouncer/server.crt"
copy_private "$TMP/tls/server.key" "$TMP/pgbouncer/server.key"
# pgbouncer takes the SCRAM verifier straight from pg_authid and logs in to the server with
# the client's proof (SCRAM pass-through), so it never sees the password.
printf '"bench" "%s"\n' "$BENCH_VERIFIER" >"$TMP/pgbouncer/userlist.txt"
cat >"$TMP/pgbouncer/pgbouncer.ini" <<EOF
; Written by bench/run.sh
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
pidfile = $TMP/pgbouncer/pgbouncer.pid
logfile = $TMP/pgbouncer/pgbouncer.log
auth_type = scram-sha-256
auth_file = $TMP/pgbouncer/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 64
client_tls_sslmode = require
client_tls_cert_file = $TMP/pgbouncer/server.crt
client_tls_key_file = $TMP/pgbouncer/server.key
server_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
EOF
if ((IS_ROOT)); then chown postgres: "$TMP/pgbouncer"/*; fi
log "starting pgbouncer ($PGBOUNCER_BIN) on 127.0.0.1:$PGBOUNCER_PORT as $( ((IS_ROOT)) && echo postgres || id -un)"
as_pg "$PGBOUNCER_BIN" -d "$TMP/pgbouncer/pgbouncer.ini" >"$TMP/pgbouncer/stdout.log" 2>&1 ||
    { cat "$TMP/pgbouncer/stdout.log" "$TMP/pgbouncer/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer did not start"; }
for _ in $(seq 100); do [[ -s "$TMP/pgbouncer/pgbouncer.pid" ]] && break; sleep 0.1; done
PGBOUNCER_PID="$(cat "$TMP/pgbouncer/pgbouncer.pid" 2>/dev/null || true)"
[[ -n "$PGBOUNCER_PID" ]] || die "pgbouncer wrote no pid file"
wait_port "$PGBOUNCER_PORT" pgbouncer "$PGBOUNCER_PID" ||
    { tail -20 "$TMP/pgbouncer/pgbouncer.log" >&2; die "pgbouncer did not start"; }

# ---------------------------------------------------------------- helpers
port_of() {
    case "$1" in
    direct) echo "$PG_PORT" ;; portcullis | enforced) echo "$PORTCULLIS_PORT" ;; pgbouncer) echo "$PGBOUNCER_PORT" ;;
    audited) echo "$AUDITED_PORT" ;; baseline) echo "$BASELINE_PORT" ;;
    esac
}
pid_of() {
    case "$1" in
    portcullis | enforced) echo "$PORTCULLIS_PID" ;; audited) echo "$AUDITED_PID" ;; baseline) echo "$BASELINE_PID" ;;
    pgbouncer) echo "$PGBOUNCER_PID" ;; *) echo "" ;;
    esac
}
log_of() {
    case "$1" in
    direct) echo "$TMP/pg/postgres.log" ;; portcullis | enforced) echo "$TMP/portcullis/portcullis.log" ;;
    pgbouncer) echo "$TMP/pgbouncer/pgbouncer.log" ;; audited) echo "$TMP/portcullis/portcullis-audited.log" ;;
    baseline) echo "$TMP/portcullis/portcullis-baseline.log" ;;
    esac
}
# The chain position (seq) of the last event in the audit file, 0 before the first.
audit_seq() {
    local f="$AUDIT_FILE" n
    [[ -s "$f" ]] || { echo 0; return; }
    n="$(tail -c 65536 "$f" | tail -n 1 | grep -o '"seq":[0-9]*' | head -1 | cut -d: -f2)" || true
    echo "${n:-0}"
}
# Waits (up to 15 s) until the audit file stops growing: the events of the run just
# ended are written (the file sink flushes at least every 200 ms).
audit_settle() {
    local a b
    for _ in $(seq 50); do
        a="$(stat -c %s "$AUDIT_FILE" 2>/dev/null || echo 0)"
        sleep 0.3
        b="$(stat -c %s "$AUDIT_FILE" 2>/dev/null || echo 0)"
        [[ "$a" == "$b" ]] && return 0
    done
    log "audit file still growing after 15 s"
}
# The enforced target is Portcullis with a user whose every statement is rewritten.
user_of() { [[ "$1" == enforced ]] && echo bench_support || echo bench; }
# utime + stime of the whole process (all threads), in clock ticks: /proc/PID/stat fields 14, 15.
cpu_ticks() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo ""; return; }
    stat="${stat##*) }" # after "(comm) ": field 3 (state) is word 1, so 14 and 15 are words 12, 13
    awk '{ print $12 + $13 }' <<<"$stat"
}
# PostgreSQL's CPU, in ticks: the postmaster's own and its reaped children's (cutime, cstime)
# plus every live child's (backends, and the server connections pgbouncer keeps open).
pg_ticks() {
    local pm
    pm="$(head -1 "$TMP/pg/data/postmaster.pid" 2>/dev/null)" || { echo ""; return; }
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" '
        { pid = $1; sub(/^[0-9]+ \(.*\) /, "") }  # now $1 = state (field 3), $2 = ppid (field 4)
        pid == pm { t += $12 + $13 + $14 + $15 }
        $2 == pm { t += $12 + $13 }
        END { print t + 0 }'
}
# Busy ticks of the whole machine (all CPUs): user nice system irq softirq steal from /proc/stat.
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# Context switches of the whole machine so far (/proc/stat ctxt): each is a process put to
# sleep or woken, so per statement they count the round trip's wake-ups.
machine_ctxt() { awk '$1 == "ctxt" { print $2; exit }' /proc/stat; }
# CPU of this shell's reaped children (user + system), in seconds, from the `times` builtin;
# it must run in this shell (a $(...) subshell has no children of its own), hence the file.
children_secs() {
    times >"$TMP/times"
    awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] } printf "%.3f", n }' "$TMP/times"
}
NCPU="$(nproc)"
export PGSSLMODE=require PGPASSWORD="$BENCH_PASSWORD" PGCONNECT_TIMEOUT=10

# Sanity check: every target answers over TLS; show what was negotiated.
for t in "${TARGETS[@]}"; do
    info="$(psql -X -At -h 127.0.0.1 -p "$(port_of "$t")" -U "$(user_of "$t")" -d bench \
        -c "SELECT count(*) FROM $SANITY_TABLE" -c '\conninfo' 2>&1)" ||
        { echo "$info" >&2; tail -20 "$(log_of "$t")" >&2; die "$t: psql over TLS failed"; }
    ssl="$(grep -o 'SSL connection ([^)]*)' <<<"$info" || echo 'no SSL?')"
    log "$t: port $(port_of "$t"): ok, $ssl"
done

if ((WARMUP > 0)); then
    log "warm-up: pgbench -S -T $WARMUP against PostgreSQL (not recorded)"
    pgbench -S -n -c 2 -j 2 -T "$WARMUP" -h 127.0.0.1 -p "$PG_PORT" -U bench bench >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------- the run
mkdir -p "$RESULTS_DIR"
STAMP="$(date +%Y-%m-%d_%H%M%S)"
RAW="$RESULTS_DIR/$STAMP.csv"
SUMMARY="$RESULTS_DIR/$STAMP-summary.csv"
OUTLOG="$RESULTS_DIR/$STAMP.log"
echo "mode,clients,round,target,status,tps,latency_ms,transactions,failed,cpu_ticks,cpu_us_per_stmt,postgres_us_per_stmt,pgbench_us_per_stmt,other_cpu_pct,loadavg1,audit_events,ctxsw_per_stmt" >"$RAW"
{
    echo "# bench/run.sh $STAMP: WORKLOAD=$WORKLOAD AUDIT=$AUDIT DURATION=$DURATION ROUNDS=$ROUNDS CLIENTS='$CLIENTS' MODES='$MODES' SCALE=$SCALE"
    echo "# portcullis: $PORTCULLIS_BIN ($("$PORTCULLIS_BIN" --version 2>&1), binary built $(date -r "$PORTCULLIS_BIN" '+%F %T %Z'); tree now at git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+uncommitted changes'))"
    [[ -z "$BASELINE_BIN" ]] || echo "# baseline: $BASELINE_BIN ($("$BASELINE_BIN" --version 2>&1), binary built $(date -r "$BASELINE_BIN" '+%F %T %Z'))"
    echo "# $("$PG_BINDIR/postgres" --version); $("$PGBOUNCER_BIN" --version | head -1); $(pgbench --version)"
} >"$OUTLOG"

declare -A DEAD=()
nmodes=$(wc -w <<<"$MODES"); nclients=$(wc -w <<<"$CLIENTS")
total=$((nmodes * nclients * ROUNDS * ${#TARGETS[@]}))
log "$total runs of $DURATION s (~$((total * (DURATION + 1) / 60 + 1)) min); raw results: $RAW"
i=0
for mode in $MODES; do
    for c in $CLIENTS; do
        j=$((c < 2 ? c : 2))
        ((j >= 1)) || j=1
        for round in $(seq "$ROUNDS"); do
            for t in "${TARGETS[@]}"; do
                i=$((i + 1))
                load="$(cut -d' ' -f1 /proc/loadavg)"
                if [[ -n "${DEAD[$t]:-}" ]]; then
                    echo "$mode,$c,$round,$t,dead,,,,,,,,,,$load,," >>"$RAW"
                    continue
                fi
                pid="$(pid_of "$t")"
                seq_before=""
                [[ "$t" == audited ]] && { audit_settle; seq_before="$(audit_seq)"; }
                before=""
                [[ -n "$pid" ]] && before="$(cpu_ticks "$pid")"
                pg_before="$(pg_ticks)"
                m_before="$(machine_ticks)"
                cs_before="$(machine_ctxt)"
                t_before="$(date +%s%N)"
                children_secs >"$TMP/kids_before"
                out="$TMP/out/$mode-$c-$round-$t.txt"
                set +e
                pgbench "${PGBENCH_WORKLOAD[@]}" -M "$mode" -c "$c" -j "$j" -T "$DURATION" -n \
                    -h 127.0.0.1 -p "$(port_of "$t")" -U "$(user_of "$t")" bench >"$out" 2>&1 &
                PGBENCH_PID=$!
                wait "$PGBENCH_PID"
                rc=$?
                PGBENCH_PID=""
                set -e
                children_secs >"$TMP/kids_after"
                t_after="$(date +%s%N)"
                kids_before="$(cat "$TMP/kids_before")" kids_after="$(cat "$TMP/kids_after")"
                m_after="$(machine_ticks)"
                cs_after="$(machine_ctxt)"
                pg_after="$(pg_ticks)"
                after=""
                [[ -n "$pid" ]] && after="$(cpu_ticks "$pid")"
                audit_events=""
                if [[ "$t" == audited ]]; then
                    # The proxy's CPU includes writing the run's audit events, also those
                    # written after pgbench ended.
                    audit_settle
                    [[ -n "$after" ]] && after="$(cpu_ticks "$pid")"
                    audit_events=$(($(audit_seq) - seq_before))
                fi

                tps="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$out")"
                lat="$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$out")"
                xacts="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")"
                failed="$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out")"
                status=ok
                if ((rc != 0)) || [[ -z "$tps" || -z "$xacts" || "${failed:-0}" != 0 ]] ||
                    grep -qiE 'error|fatal|abort' "$out"; then
                    status="fail(rc=$rc)"
                fi
                ticks="" cpu_us=""
                if [[ -n "$pid" ]]; then
                    if [[ -z "$after" ]]; then
                        status="died"
                        DEAD[$t]=1
                    elif [[ -n "$before" && "${xacts:-0}" -gt 0 ]]; then
                        ticks=$((after - before))
                        cpu_us="$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$xacts" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')"
                    fi
                fi
                # Who else used the CPUs meanwhile: machine busy time minus PostgreSQL, pgbench and
                # the proxy under test, as a share of all CPUs over the run's wall time.
                read -r pg_us bench_us other_pct < <(awk -v hz="$CLK_TCK" -v n="${xacts:-0}" -v ncpu="$NCPU" \
                    -v pg=$((pg_after - pg_before)) -v kids="$kids_before $kids_after" \
                    -v m=$((m_after - m_before)) -v wall=$(((t_after - t_before) / 1000)) -v proxy="${ticks:-0}" '
                    BEGIN {
                        split(kids, k, " "); bench = k[2] - k[1]          # seconds
                        other = m / hz - pg / hz - bench - proxy / hz     # seconds
                        if (other < 0) other = 0
                        if (n > 0) printf "%.2f %.2f ", pg * 1e6 / hz / n, bench * 1e6 / n; else printf "- - "
                        printf "%.1f\n", (wall > 0 ? 100 * other * 1e6 / wall / ncpu : 0)
                    }')
                [[ "$pg_us" == - ]] && pg_us="" && bench_us=""
                cs=""
                ((${xacts:-0} > 0)) && cs="$(awk -v d=$((cs_after - cs_before)) -v n="$xacts" 'BEGIN { printf "%.2f", d / n }')"
                echo "$mode,$c,$round,$t,$status,$tps,$lat,$xacts,${failed:-},$ticks,$cpu_us,$pg_us,$bench_us,$other_pct,$load,$audit_events,$cs" >>"$RAW"
                {
                    echo "=== [$i/$total] $t mode=$mode clients=$c round=$round status=$status rc=$rc"
                    cat "$out"
                } >>"$OUTLOG"
                if [[ "$status" == ok ]]; then
                    log "[$i/$total] $mode c=$c r=$round $t: tps=$tps lat=${lat}ms${cpu_us:+ proxy=${cpu_us}us/stmt} pg=${pg_us}us/stmt pgbench=${bench_us}us/stmt cs=${cs}/stmt other=${other_pct}%${audit_events:+ audit_events=$audit_events}"
                else
                    log "[$i/$total] $mode c=$c r=$round $t: $status; pgbench output:"
                    sed 's/^/    /' "$out" >&2
                    logf="$(log_of "$t")"
                    if [[ -r "$logf" ]]; then
                        log "last lines of $t's log ($logf):"
                        tail -15 "$logf" | sed 's/^/    /' >&2
                        { echo "--- last lines of $t's log:"; tail -40 "$logf"; } >>"$OUTLOG"
                    fi
                fi
            done
        done
    done
done

# ---------------------------------------------------------------- summary
# Helpers of the summary tables below: add(key, v) collects a run's value, median(key) is the
# median over rounds, f(v, fmt) prints one that may be missing as "-".
AWK_STATS='function median(key,   n, i, j, v, a) {
    n = cnt[key]
    if (n == 0) return ""
    for (i = 1; i <= n; i++) a[i] = vals[key, i]
    for (i = 2; i <= n; i++) { v = a[i]; for (j = i - 1; j >= 1 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function add(key, v) { if (v != "") { cnt[key]++; vals[key, cnt[key]] = v + 0 } }
function f(v, fmt) { return v == "" ? "-" : sprintf(fmt, v) }
'
awk -F, -v summary="$SUMMARY" "$AWK_STATS"'
function r(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.3f", a / b) : "" }
NR == 1 { next }
{
    k = $1 SUBSEP $2
    if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
    runs[k, $4]++
    if ($5 != "ok") { fails[k, $4]++; next }
    add("tps" SUBSEP k SUBSEP $4, $6)
    add("lat" SUBSEP k SUBSEP $4, $7)
    add("cpu" SUBSEP k SUBSEP $4, $11)
    add("pg" SUBSEP k SUBSEP $4, $12)
    add("pgb" SUBSEP k SUBSEP $4, $13)
    if ($14 + 0 > maxoth[k]) maxoth[k] = $14 + 0
}
END {
    print "mode,clients,rounds,tps_direct,tps_portcullis,tps_pgbouncer,lat_ms_direct,lat_ms_portcullis,lat_ms_pgbouncer,ratio_portcullis_direct,ratio_pgbouncer_direct,ratio_portcullis_pgbouncer,cpu_us_per_stmt_portcullis,cpu_us_per_stmt_pgbouncer,postgres_us_per_stmt_direct,postgres_us_per_stmt_portcullis,postgres_us_per_stmt_pgbouncer,pgbench_us_per_stmt_direct,pgbench_us_per_stmt_portcullis,pgbench_us_per_stmt_pgbouncer,max_other_cpu_pct,failed_runs_direct,failed_runs_portcullis,failed_runs_pgbouncer" > summary
    hdr = sprintf("%-8s %4s | %9s %9s %9s | %7s %7s %7s | %6s %6s %6s | %8s %8s | %5s | %s\n", \
        "mode", "cli", "TPS dir", "TPS port", "TPS pgb", "lat dir", "lat prt", "lat pgb", "P/D", "B/D", "P/B", "µs/st P", "µs/st B", "oth%", "failed runs") \
        sprintf("%-8s %4s | %9s %9s %9s | %7s %7s %7s | %6s %6s %6s | %8s %8s | %5s |\n", "", "", "", "", "", "(ms)", "(ms)", "(ms)", "", "", "", "", "", "max")
    printf "%s", hdr
    hdr2 = sprintf("%-8s %4s | %-27s | %-27s | %s\n", "", "", "direct", "portcullis", "pgbouncer") \
        sprintf("%-8s %4s | %6s %6s %6s %6s | %6s %6s %6s %6s | %6s %6s %6s %6s\n", "mode", "cli", \
            "pg", "bench", "", "total", "pg", "bench", "proxy", "total", "pg", "bench", "proxy", "total")
    for (o = 1; o <= nk; o++) {
        k = order[o]; split(k, p, SUBSEP)
        td = median("tps" SUBSEP k SUBSEP "direct"); tp = median("tps" SUBSEP k SUBSEP "portcullis"); tb = median("tps" SUBSEP k SUBSEP "pgbouncer")
        ld = median("lat" SUBSEP k SUBSEP "direct"); lp = median("lat" SUBSEP k SUBSEP "portcullis"); lb = median("lat" SUBSEP k SUBSEP "pgbouncer")
        cp = median("cpu" SUBSEP k SUBSEP "portcullis"); cb = median("cpu" SUBSEP k SUBSEP "pgbouncer")
        fd = fails[k, "direct"] + 0; fp = fails[k, "portcullis"] + 0; fb = fails[k, "pgbouncer"] + 0
        fl = (fd + fp + fb) ? sprintf("dir %d/%d, port %d/%d, pgb %d/%d", fd, runs[k, "direct"], fp, runs[k, "portcullis"], fb, runs[k, "pgbouncer"]) : ""
        printf "%-8s %4s | %9s %9s %9s | %7s %7s %7s | %6s %6s %6s | %8s %8s | %5.1f | %s\n", p[1], p[2], \
            f(td, "%.0f"), f(tp, "%.0f"), f(tb, "%.0f"), f(ld, "%.3f"), f(lp, "%.3f"), f(lb, "%.3f"), \
            f(r(tp, td), "%s"), f(r(tb, td), "%s"), f(r(tp, tb), "%s"), f(cp, "%.1f"), f(cb, "%.1f"), maxoth[k], fl
        gd = median("pg" SUBSEP k SUBSEP "direct"); gp = median("pg" SUBSEP k SUBSEP "portcullis"); gb = median("pg" SUBSEP k SUBSEP "pgbouncer")
        bd = median("pgb" SUBSEP k SUBSEP "direct"); bp = median("pgb" SUBSEP k SUBSEP "portcullis"); bb = median("pgb" SUBSEP k SUBSEP "pgbouncer")
        line2[o] = sprintf("%-8s %4s | %6s %6s %6s %6s | %6s %6s %6s %6s | %6s %6s %6s %6s\n", p[1], p[2], \
            f(gd, "%.1f"), f(bd, "%.1f"), "", f(gd + bd, "%.1f"), f(gp, "%.1f"), f(bp, "%.1f"), f(cp, "%.1f"), f(gp + bp + cp, "%.1f"), \
            f(gb, "%.1f"), f(bb, "%.1f"), f(cb, "%.1f"), f(gb + bb + cb, "%.1f"))
        printf "%s,%s,%d,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%.1f,%d,%d,%d\n", p[1], p[2], runs[k, "direct"], \
            td == "" ? "" : sprintf("%.1f", td), tp == "" ? "" : sprintf("%.1f", tp), tb == "" ? "" : sprintf("%.1f", tb), \
            ld, lp, lb, r(tp, td), r(tb, td), r(tp, tb), cp, cb, gd, gp, gb, bd, bp, bb, maxoth[k], fd, fp, fb > summary
    }
    printf "\nCPU per statement by component (medians, µs; pg = PostgreSQL, bench = pgbench):\n%s", hdr2
    for (o = 1; o <= nk; o++) printf "%s", line2[o]
}' "$RAW" >"$TMP/table.txt"

# Policy enforcement (WORKLOAD=customers): the same proxy with a user whose statements are
# all rewritten (E) against the admin's open statements (P) and pgbouncer (B).
awk -F, "$AWK_STATS"'
function r(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.3f", a / b) : "-" }
NR == 1 { next }
$4 == "enforced" { any = 1 }
{
    k = $1 SUBSEP $2
    if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
    if ($5 == "ok") { add("tps" SUBSEP k SUBSEP $4, $6); add("cpu" SUBSEP k SUBSEP $4, $11) }
}
END {
    if (!any) exit
    printf "\nPolicy enforcement: E = Portcullis as support_acme (row filter + masks, every statement rewritten),\nP = Portcullis as the dba (nothing rewritten), B = pgbouncer; medians over rounds\n"
    printf "%-8s %4s | %9s %9s %9s | %6s %6s | %8s %8s %8s\n", "mode", "cli", "TPS P", "TPS E", "TPS B", "E/P", "E/B", "µs/st P", "µs/st E", "µs/st B"
    for (o = 1; o <= nk; o++) {
        k = order[o]; split(k, p, SUBSEP)
        tp = median("tps" SUBSEP k SUBSEP "portcullis"); te = median("tps" SUBSEP k SUBSEP "enforced"); tb = median("tps" SUBSEP k SUBSEP "pgbouncer")
        cp = median("cpu" SUBSEP k SUBSEP "portcullis"); ce = median("cpu" SUBSEP k SUBSEP "enforced"); cb = median("cpu" SUBSEP k SUBSEP "pgbouncer")
        printf "%-8s %4s | %9s %9s %9s | %6s %6s | %8s %8s %8s\n", p[1], p[2], f(tp, "%.0f"), f(te, "%.0f"), f(tb, "%.0f"), \
            r(te, tp), r(te, tb), f(cp, "%.1f"), f(ce, "%.1f"), f(cb, "%.1f")
    }
}' "$RAW" >>"$TMP/table.txt"

# Audit (AUDIT=1): the same proxy with every statement audited (A) against Portcullis
# without audit (P) and direct PostgreSQL (D).
AUDIT_SUMMARY="$RESULTS_DIR/$STAMP-audit-summary.csv"
awk -F, -v summary="$AUDIT_SUMMARY" "$AWK_STATS"'
function r(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.3f", a / b) : "-" }
NR == 1 { next }
$4 == "audited" { any = 1 }
{
    k = $1 SUBSEP $2
    if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
    if ($5 == "ok") {
        add("tps" SUBSEP k SUBSEP $4, $6); add("cpu" SUBSEP k SUBSEP $4, $11)
        if ($4 == "audited" && $8 > 0 && $16 != "") add("evs" SUBSEP k, $16 / $8)
    }
}
END {
    if (!any) exit
    printf "\nAudit: A = Portcullis with every statement audited (file sink, json, fsync per batch),\nP = Portcullis without audit, D = direct; medians over rounds; ev/st = audit events written per\nstatement (logins and session ends included, so slightly above 1; below 1 means events were lost)\n"
    printf "%-8s %4s | %9s %9s %9s | %6s %6s | %8s %8s | %6s\n", "mode", "cli", "TPS D", "TPS P", "TPS A", "A/P", "A/D", "µs/st P", "µs/st A", "ev/st"
    print "mode,clients,tps_direct,tps_portcullis,tps_audited,ratio_audited_portcullis,ratio_audited_direct,cpu_us_per_stmt_portcullis,cpu_us_per_stmt_audited,audit_events_per_stmt" > summary
    for (o = 1; o <= nk; o++) {
        k = order[o]; split(k, p, SUBSEP)
        td = median("tps" SUBSEP k SUBSEP "direct"); tp = median("tps" SUBSEP k SUBSEP "portcullis"); ta = median("tps" SUBSEP k SUBSEP "audited")
        cp = median("cpu" SUBSEP k SUBSEP "portcullis"); ca = median("cpu" SUBSEP k SUBSEP "audited")
        ev = median("evs" SUBSEP k)
        printf "%-8s %4s | %9s %9s %9s | %6s %6s | %8s %8s | %6s\n", p[1], p[2], f(td, "%.0f"), f(tp, "%.0f"), f(ta, "%.0f"), \
            r(ta, tp), r(ta, td), f(cp, "%.1f"), f(ca, "%.1f"), f(ev, "%.3f")
        printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", p[1], p[2], td, tp, ta, r(ta, tp), r(ta, td), cp, ca, ev > summary
    }
}' "$RAW" >>"$TMP/table.txt"
[[ -s "$AUDIT_SUMMARY" ]] || rm -f "$AUDIT_SUMMARY"

# Baseline (BASELINE_BIN): this build (P) against the other one (X), run for run.
BASELINE_SUMMARY="$RESULTS_DIR/$STAMP-baseline-summary.csv"
awk -F, -v summary="$BASELINE_SUMMARY" "$AWK_STATS"'
function r(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.3f", a / b) : "-" }
NR == 1 { next }
$4 == "baseline" { any = 1 }
{
    k = $1 SUBSEP $2
    if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
    if ($5 == "ok") {
        add("tps" SUBSEP k SUBSEP $4, $6); add("cpu" SUBSEP k SUBSEP $4, $11)
        add("pg" SUBSEP k SUBSEP $4, $12); add("bench" SUBSEP k SUBSEP $4, $13)
    }
}
END {
    if (!any) exit
    printf "\nBaseline: P = this build, X = BASELINE_BIN, same configuration, interleaved; medians over rounds;\nµs/st = CPU per statement of the proxy, of PostgreSQL behind it and of pgbench\n"
    printf "%-8s %4s | %9s %9s %6s | %8s %8s | %8s %8s | %8s %8s\n", "mode", "cli", "TPS P", "TPS X", "P/X", "proxy P", "proxy X", "pg P", "pg X", "bench P", "bench X"
    print "mode,clients,tps_portcullis,tps_baseline,ratio,cpu_us_per_stmt_portcullis,cpu_us_per_stmt_baseline,postgres_us_per_stmt_portcullis,postgres_us_per_stmt_baseline,pgbench_us_per_stmt_portcullis,pgbench_us_per_stmt_baseline" > summary
    for (o = 1; o <= nk; o++) {
        k = order[o]; split(k, p, SUBSEP)
        tp = median("tps" SUBSEP k SUBSEP "portcullis"); tx = median("tps" SUBSEP k SUBSEP "baseline")
        cp = median("cpu" SUBSEP k SUBSEP "portcullis"); cx = median("cpu" SUBSEP k SUBSEP "baseline")
        gp = median("pg" SUBSEP k SUBSEP "portcullis"); gx = median("pg" SUBSEP k SUBSEP "baseline")
        bp = median("bench" SUBSEP k SUBSEP "portcullis"); bx = median("bench" SUBSEP k SUBSEP "baseline")
        printf "%-8s %4s | %9s %9s %6s | %8s %8s | %8s %8s | %8s %8s\n", p[1], p[2], f(tp, "%.0f"), f(tx, "%.0f"), r(tp, tx), \
            f(cp, "%.1f"), f(cx, "%.1f"), f(gp, "%.1f"), f(gx, "%.1f"), f(bp, "%.1f"), f(bx, "%.1f")
        printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", p[1], p[2], tp, tx, r(tp, tx), cp, cx, gp, gx, bp, bx > summary
    }
}' "$RAW" >>"$TMP/table.txt"
[[ -s "$BASELINE_SUMMARY" ]] || rm -f "$BASELINE_SUMMARY"

{
    echo
    echo "Portcullis vs pgbouncer (session mode) vs direct PostgreSQL over TLS: WORKLOAD=$WORKLOAD" \
        "($([[ "$WORKLOAD" == customers ]] && echo "a quickstart customer by id" || echo "pgbench -S"))"
    echo "DURATION=${DURATION}s ROUNDS=$ROUNDS SCALE=$SCALE; medians over rounds; P=portcullis B=pgbouncer D=direct;"
    echo "µs/st = proxy process CPU (utime+stime) per statement; $(nproc) CPUs shared by pgbench, proxies and PostgreSQL;"
    echo "oth% = CPU used by anything else on the machine during the run (share of all CPUs), worst run of the row"
    echo
    cat "$TMP/table.txt"
    echo
} | tee -a "$OUTLOG"
if ((AUDIT)); then
    # The whole trail the audited proxy wrote must verify: no gap, no edit, no reordering.
    # Rotated files (names sort in rotation order), then the active one.
    shopt -s nullglob
    audit_files=("$AUDIT_FILE".*)
    shopt -u nullglob
    audit_files+=("$AUDIT_FILE")
    if verified="$("$PORTCULLIS_BIN" audit verify "${audit_files[@]}" 2>&1)"; then
        log "audit trail verified: $(head -1 <<<"$verified")"
    else
        log "audit trail did NOT verify:"
        sed 's/^/    /' <<<"$verified" | head -20 >&2
    fi
    { echo "# portcullis audit verify:"; sed 's/^/#   /' <<<"$verified"; } >>"$OUTLOG"
    log "audit summary: $AUDIT_SUMMARY"
fi
log "raw runs: $RAW"
log "summary:  $SUMMARY"
log "pgbench output: $OUTLOG"
if awk -F, 'NR > 1 && $5 != "ok" { bad = 1 } END { exit !bad }' "$RAW"; then
    log "some runs failed; see $OUTLOG"
    exit 3
fi
