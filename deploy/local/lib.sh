# Shared by deploy/local/run and deploy/local/test: a private PostgreSQL
# cluster under the repo's ignored .tp/ folder, and the three services.
# Source it; it defines functions only.

TP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TP_ROOT/target}"

log() { printf '\033[1m[tp]\033[0m %s\n' "$*" >&2; }
die() { printf '[tp] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root to run: $*"
    fi
}

apt_install() {
    log "installing $* with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

require_cargo() {
    command -v cargo >/dev/null || die "cargo not found: install Rust with https://rustup.rs, then retry"
}

# Finds PostgreSQL's server binaries, installing Debian's postgresql when absent.
pg_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
        apt_install postgresql
        dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    fi
    [ -x "$dir/initdb" ] || die "PostgreSQL server binaries not found after installing postgresql"
    echo "$dir"
}

# PostgreSQL refuses to run as root: as root, run its commands as `postgres`.
pg_as_owner() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_start NAME PORT: starts (initialising on first use) a cluster in
# .tp/pg-NAME listening on 127.0.0.1:PORT only. Sets PG_DATA and PG_BIN.
pg_start() {
    local name="$1" port="$2"
    PG_BIN=$(pg_bindir)
    local base="$TP_ROOT/.tp"
    mkdir -p "$base"
    # The postgres user must be able to reach the data directory; when the
    # checkout sits under a private home directory, keep the cluster in /var/tmp.
    if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$base"; then
        base="/var/tmp/tp-$(echo "$TP_ROOT" | md5sum | cut -c1-8)"
        log "$TP_ROOT is not reachable by the postgres user; keeping the cluster in $base"
        mkdir -p "$base"
    fi
    PG_DATA="$base/pg-$name"
    PG_SOCKET="$base/pg-$name-socket"
    mkdir -p "$PG_SOCKET"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$PG_SOCKET"; fi
    if [ ! -s "$PG_DATA/PG_VERSION" ]; then
        mkdir -p "$PG_DATA"
        if [ "$(id -u)" -eq 0 ]; then chown postgres: "$PG_DATA"; fi
        chmod 700 "$PG_DATA"
        log "initialising PostgreSQL cluster in $PG_DATA"
        # Trust on loopback only: a throwaway local cluster, never exposed.
        pg_as_owner "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    if pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
        pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" stop -m fast >/dev/null
    fi
    log "starting PostgreSQL on 127.0.0.1:$port"
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_SOCKET -c max_connections=300 -c fsync=${TP_PG_FSYNC:-on}" \
        start >/dev/null || { tail -n 20 "$PG_DATA/server.log" >&2; die "PostgreSQL did not start"; }
    PG_PORT="$port"
}

# pg_discard NAME: stops the cluster .tp/pg-NAME if it runs, and deletes it.
pg_discard() {
    local bin dir
    bin=$(pg_bindir)
    for dir in "$TP_ROOT/.tp/pg-$1" "/var/tmp/tp-$(echo "$TP_ROOT" | md5sum | cut -c1-8)/pg-$1"; do
        if [ -f "$dir/postmaster.pid" ]; then
            pg_as_owner "$bin/pg_ctl" -D "$dir" stop -m immediate >/dev/null 2>&1 || true
        fi
        rm -rf "$dir"
    done
}

# pg_ctl_command: the command line that runs pg_ctl on the cluster
# pg_start last started, as its owner (append `stop -m fast`, `restart`...).
pg_ctl_command() {
    if [ "$(id -u)" -eq 0 ]; then
        echo "runuser -u postgres -- $PG_BIN/pg_ctl -D $PG_DATA"
    else
        echo "$PG_BIN/pg_ctl -D $PG_DATA"
    fi
}

pg_stop() {
    if [ -n "${PG_DATA:-}" ] && [ -n "${PG_BIN:-}" ]; then
        pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" stop -m fast >/dev/null 2>&1 || true
    fi
}

psql_admin() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"
}

# pg_create_database NAME: the product's roles and a database owned by
# tp_owner. tp_app, which the services use, is neither superuser, nor owner,
# nor BYPASSRLS.
pg_create_database() {
    local db="$1"
    psql_admin -d postgres <<SQL
DO \$\$ BEGIN CREATE ROLE tp_owner LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
DO \$\$ BEGIN CREATE ROLE tp_app LOGIN NOSUPERUSER NOBYPASSRLS; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
SQL
    if ! psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
        psql_admin -d postgres -c "CREATE DATABASE $db OWNER tp_owner"
    fi
}

build_binaries() {
    log "building the services (cargo build --bins; the first build takes a few minutes)"
    (cd "$TP_ROOT" && cargo build --quiet --bins)
    TP_BIN="$CARGO_TARGET_DIR/debug"
}

STACK_PIDS=()

# stack_start DB GATEWAY_PORT CONVERSATION_PORT KNOWLEDGE_PORT: migrates DB
# and starts the three services in the background, logging to .tp/logs.
# Each service's HTTP ops port (/metrics, /healthz, /readyz; the gateway's
# also takes Stripe webhooks) is its gRPC port + 10: 50061-50063 for the
# dev stack, 31071-31073 for the Python client's.
stack_start() {
    local db="$1" gw="$2" conv="$3" know="$4"
    local owner_url="postgres://tp_owner@127.0.0.1:$PG_PORT/$db"
    local app_url="postgres://tp_app@127.0.0.1:$PG_PORT/$db"
    local logs="$TP_ROOT/.tp/logs"
    mkdir -p "$logs"
    for service in gateway conversation knowledge; do
        "$TP_BIN/$service" migrate --database-url "$owner_url" >>"$logs/$service.log" 2>&1 \
            || { tail -n 20 "$logs/$service.log" >&2; die "$service migrations failed"; }
    done
    export TP_DATABASE_URL="$app_url"
    # The gateway and knowledge need a fraction of a core: one worker
    # thread each (TP_WORKER_THREADS; BENCHMARKS.md, session 13).
    TP_KNOWLEDGE_ADDR="127.0.0.1:$know" TP_HTTP_ADDR="127.0.0.1:$((know + 10))" TP_WORKER_THREADS=1 "$TP_BIN/knowledge" serve >>"$logs/knowledge.log" 2>&1 &
    STACK_PIDS+=($!)
    TP_CONVERSATION_ADDR="127.0.0.1:$conv" TP_HTTP_ADDR="127.0.0.1:$((conv + 10))" TP_KNOWLEDGE_URL="http://127.0.0.1:$know" \
        "$TP_BIN/conversation" serve >>"$logs/conversation.log" 2>&1 &
    STACK_PIDS+=($!)
    TP_GATEWAY_ADDR="127.0.0.1:$gw" TP_HTTP_ADDR="127.0.0.1:$((gw + 10))" TP_CONVERSATION_URL="http://127.0.0.1:$conv" TP_KNOWLEDGE_URL="http://127.0.0.1:$know" \
        TP_SLO_SCRAPE_URLS="http://127.0.0.1:$((conv + 10))/metrics,http://127.0.0.1:$((know + 10))/metrics" TP_WORKER_THREADS=1 \
        "$TP_BIN/gateway" serve >>"$logs/gateway.log" 2>&1 &
    STACK_PIDS+=($!)
    local port
    for port in "$know" "$conv" "$gw"; do
        wait_for_port "$port" || { tail -n 20 "$logs"/*.log >&2; die "a service did not start on port $port (logs in $logs)"; }
    done
}

wait_for_port() {
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        for pid in "${STACK_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || return 1; done
        sleep 0.1
    done
    return 1
}

stack_stop() {
    local pid
    for pid in "${STACK_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${STACK_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    STACK_PIDS=()
}

BUF_VERSION=1.75.0

# Installs the buf CLI (from the @bufbuild/buf npm package) under .tp/tools.
buf_bin() {
    local tools="$TP_ROOT/.tp/tools"
    local bin="$tools/node_modules/.bin/buf"
    if [ ! -x "$bin" ] || [ "$("$bin" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
        command -v npm >/dev/null || apt_install nodejs npm
        log "installing buf $BUF_VERSION from npm"
        mkdir -p "$tools"
        npm install --silent --no-save --no-audit --no-fund --prefix "$tools" "@bufbuild/buf@$BUF_VERSION" >&2
    fi
    echo "$bin"
}

# A virtualenv under .tp/venv with the Python client's requirements.
python_env() {
    local venv="$TP_ROOT/.tp/venv"
    if [ ! -x "$venv/bin/python" ]; then
        command -v python3 >/dev/null || apt_install python3
        python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; rm -rf "$venv"; python3 -m venv "$venv"; }
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$TP_ROOT/tests/python/requirements.txt" >&2
    echo "$venv/bin/python"
}

# slo_checks: the Prometheus files generated by `tp slo generate` under
# promtool (Debian's prometheus package, 2.42 on bookworm, installed when
# promtool is missing): the rules and prometheus.yml checked, and the rules'
# unit tests (burn-rate alerts, budgets, NaN guards) run, a batch of test
# files per core. Whether the files are stale is a cargo test (tp-slo).
slo_checks() {
    command -v promtool >/dev/null || apt_install --no-install-recommends prometheus
    local dir="$TP_ROOT/deploy/prometheus" out
    out="$(mktemp)"
    promtool check rules "$dir"/rules/*.yaml >"$out" 2>&1 \
        || { cat "$out" >&2; rm -f "$out"; die "promtool check rules failed"; }
    promtool check config "$dir/prometheus.yml" >"$out" 2>&1 \
        || { cat "$out" >&2; rm -f "$out"; die "promtool check config failed"; }
    # Test files name their rule files relative to themselves.
    (cd "$dir/tests" && printf '%s\n' *.yaml | xargs -P "$(nproc)" -n 16 promtool test rules) >"$out" 2>&1 \
        || { grep -v '^  SUCCESS$' "$out" | grep -B1 -A30 FAILED >&2; rm -f "$out"; die "promtool test rules failed"; }
    log "promtool: $(ls "$dir"/rules/*.yaml | wc -l) rule files valid, $(grep -c '^  SUCCESS$' "$out") rule test files passed"
    rm -f "$out"
}

# chromium_bin: Debian's chromium, with chromedriver for the web chat page's
# Selenium test, installed when either is missing; prints the browser's path.
chromium_bin() {
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
        apt_install --no-install-recommends chromium chromium-driver
    fi
    command -v chromium || die "chromium could not be installed"
}

# slo_page_check HTTP_ADDR: loads the gateway's SLO status page in headless
# Chromium (installed from Debian if missing) and checks the rendered DOM
# names every SLO of slo/*.yaml; a screenshot goes to .tp/slo.png.
slo_page_check() {
    local addr="$1" browser dom name missing=0
    browser=$(chromium_bin)
    local flags=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --user-data-dir="$TP_ROOT/.tp/chromium")
    dom=$("$browser" "${flags[@]}" --dump-dom "http://$addr/slo" 2>/dev/null) || die "chromium could not load http://$addr/slo"
    # Chromium's exit status after a screenshot is not reliable across
    # versions; whether the file was written is.
    rm -f "$TP_ROOT/.tp/slo.png"
    "$browser" "${flags[@]}" --window-size=1400,2000 --screenshot="$TP_ROOT/.tp/slo.png" "http://$addr/slo" >/dev/null 2>&1 || true
    [ -s "$TP_ROOT/.tp/slo.png" ] || die "chromium saved no screenshot of http://$addr/slo"
    local names expected
    names=$(sed -n '/^kind: SLO$/,/^  name:/{s/^  name: *//p}' "$TP_ROOT"/slo/*.yaml)
    expected=$(cat "$TP_ROOT"/slo/*.yaml | grep -c '^kind: SLO$')
    # A change in the specs' layout must not turn this into a check of nothing.
    [ "$(wc -w <<<"$names")" = "$expected" ] && [ "$expected" -gt 0 ] \
        || die "read $(wc -w <<<"$names") SLO names from slo/*.yaml, expected $expected"
    for name in $names; do
        if ! grep -q -- "$name" <<<"$dom"; then
            echo "  /slo does not show SLO $name" >&2
            missing=1
        fi
    done
    [ "$missing" = 0 ] || die "the SLO status page is missing SLOs (see above)"
}
