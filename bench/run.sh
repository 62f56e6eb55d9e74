#!/usr/bin/env bash
# frontgate benchmark harness: frontgate against nginx as a reverse proxy, same upstream, same load.
#
#   bash bench/run.sh                                   # full run: 3 rounds x 10 s per leg and scenario
#   BENCH_SECONDS=3 BENCH_ROUNDS=1 bash bench/run.sh    # smoke run
#
# Layout (2 cores): upstream nginx + wrk on core 0, the proxy under test on core 1.
# See bench/README.md for every knob. Results: stdout and bench/results/<timestamp>.md (raw wrk output in
# bench/results/<timestamp>/). Exit status: 0 all legs clean, 1 a leg failed to start, crashed or had errors,
# 2 usage/environment problem.
# The whole script is one { ... } block: bash parses it completely before running, so editing this file (or
# switching branches) during a run cannot change what the run does.
{
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# --- knobs ---------------------------------------------------------------------------------------------
BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-50}
BENCH_THREADS=${BENCH_THREADS:-1}
BENCH_WARMUP=${BENCH_WARMUP:-2}                      # seconds of unrecorded load before every measurement
BENCH_SCENARIOS=${BENCH_SCENARIOS:-"plain 16k"}
BENCH_START_TIMEOUT=${BENCH_START_TIMEOUT:-10}       # seconds a server gets to open its port
BENCH_WORKERS2=${BENCH_WORKERS2:-0}                  # 1: add nginx-w2 and frontgate-w2 legs (both cores)
BENCH_FRONTGATE=${BENCH_FRONTGATE:-.venv/bin/frontgate}
BENCH_FRONTGATE_CONFIG=${BENCH_FRONTGATE_CONFIG:-bench/frontgate.yaml}
BENCH_EXTRA=${BENCH_EXTRA:-}                         # "name=config.yaml name2=other.yaml": more frontgate legs
BENCH_TLS=${BENCH_TLS:-0}                            # 1: add nginx-tls and frontgate-tls legs; only: just those
BENCH_NGINX=${BENCH_NGINX:-/usr/sbin/nginx}
BENCH_WRK=${BENCH_WRK:-wrk}
BENCH_LOAD_CPUS=${BENCH_LOAD_CPUS:-0}                # upstream nginx and wrk
BENCH_PROXY_CPUS=${BENCH_PROXY_CPUS:-1}              # the proxy under test (1 worker)
export BENCH_HEADER=${BENCH_HEADER:-}               # one "Name: value" header sent on every request (e.g. a token)
BENCH_KEEP=${BENCH_KEEP:-0}                          # 1: keep the temp dir (nginx confs) for inspection

die() { echo "bench: $*" >&2; exit 2; }
note() { echo "bench: $*" >&2; }

for v in BENCH_SECONDS BENCH_ROUNDS BENCH_CONNECTIONS BENCH_THREADS BENCH_WARMUP BENCH_START_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((BENCH_SECONDS >= 1 && BENCH_ROUNDS >= 1 && BENCH_THREADS >= 1)) || die "BENCH_SECONDS, BENCH_ROUNDS and BENCH_THREADS must be >= 1"
((BENCH_CONNECTIONS >= BENCH_THREADS)) || die "BENCH_CONNECTIONS must be >= BENCH_THREADS"
for s in $BENCH_SCENARIOS; do
    [[ $s == plain || $s == 16k || $s == handshake ]] || die "unknown scenario '$s' (plain, 16k, handshake)"
done
[[ $BENCH_TLS == 0 || $BENCH_TLS == 1 || $BENCH_TLS == only ]] || die "BENCH_TLS must be 0, 1 or only"
# handshake = GET /plain with `Connection: close`: a new connection (over TLS: a full handshake) per request.
# It is run on the TLS legs only, and added to the scenarios whenever they are.
if [[ $BENCH_TLS != 0 && " $BENCH_SCENARIOS " != *" handshake "* ]]; then BENCH_SCENARIOS="$BENCH_SCENARIOS handshake"; fi

PY=${BENCH_PYTHON:-}
if [[ -z $PY ]]; then
    if command -v python3 >/dev/null; then PY=python3; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python;
    else die "python3 not found (needed for bench/report.py)"; fi
fi
[[ -x $BENCH_NGINX ]] || die "nginx not found at $BENCH_NGINX (apt-get install -y nginx-light)"
command -v "$BENCH_WRK" >/dev/null || die "wrk not found (apt-get install -y wrk)"
for tool in taskset setsid timeout flock; do command -v $tool >/dev/null || die "$tool not found (util-linux/coreutils)"; done

NPROC=$(nproc)
if ((NPROC < 2)); then
    note "WARNING: only $NPROC CPU; the proxy under test shares its core with wrk and the upstream"
    BENCH_PROXY_CPUS=0
fi
ALL_CPUS="0-$((NPROC - 1))"

# --- state and cleanup ---------------------------------------------------------------------------------
RESULTS="$ROOT/bench/results"
mkdir -p "$RESULTS"
# One run at a time on this machine: two runs would fight over the same pinned cores.
exec 9>"$RESULTS/.lock"
if ! flock -n 9; then
    note "another benchmark run holds $RESULTS/.lock; waiting for it (up to 15 min)"
    flock -w 900 9 || die "gave up waiting for the other benchmark run"
fi
TS=$(date -u +%Y%m%dT%H%M%SZ)
[[ -e $RESULTS/$TS ]] && TS="$TS-$$"   # two runs started in the same second
RUN_DIR="$RESULTS/$TS"
mkdir -p "$RUN_DIR/wrk" "$RUN_DIR/logs"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/frontgate-bench.XXXXXX")
chmod 755 "$WORK"   # nginx workers run as an unprivileged user when started as root
WRK_PID=
PIDS=()             # every server we start is a session/process-group leader: kill the whole group

alive() {   # a pid that exists and is not a zombie
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $st != Z* ]]
}

cleanup() {
    local rc=$? pid i left
    trap - EXIT INT TERM
    set +e
    # a running wrk: `timeout` made it a process group of its own
    [[ -n $WRK_PID ]] && { kill -TERM -- "-$WRK_PID" 2>/dev/null || kill -TERM "$WRK_PID" 2>/dev/null; }
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; done
    for ((i = 0; i < 50; i++)); do       # up to 5 s for a graceful exit
        left=0
        for pid in "${PIDS[@]}"; do
            if alive "$pid"; then left=1; else wait "$pid" 2>/dev/null; fi
        done
        ((left)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    if [[ $BENCH_KEEP == 1 ]]; then note "temp dir kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo; note "interrupted"; exit 130' INT
trap 'note "terminated"; exit 143' TERM

LAST_PID=
start_bg() {   # LOGFILE CMD...   start CMD in its own session, remember it
    local log=$1
    shift
    setsid "$@" >"$log" 2>&1 </dev/null 9>&- &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

wait_port() {   # PORT PID TIMEOUT -> 0 listening, 1 timed out, 2 process exited
    local port=$1 pid=$2 tries=$(($3 * 10)) i
    for ((i = 0; i < tries; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        alive "$pid" || return 2
        sleep 0.1
    done
    return 1
}

free_ports() {   # N -> N distinct free ports on 127.0.0.1, space separated
    "$PY" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# --- legs ----------------------------------------------------------------------------------------------
# A leg is one proxy under test. kind nginx|frontgate; base = the nginx leg its ratio is computed against.
LEG_NAME=() LEG_KIND=() LEG_CPUS=() LEG_WORKERS=() LEG_CONFIG=() LEG_BASE=() LEG_PORT=() LEG_PID=()
LEG_STATE=() LEG_NOTE=() LEG_SCHEME=()
add_leg() {   # NAME KIND CPUS WORKERS CONFIG BASE NOTE [SCHEME]
    LEG_NAME+=("$1") LEG_KIND+=("$2") LEG_CPUS+=("$3") LEG_WORKERS+=("$4") LEG_CONFIG+=("$5")
    LEG_BASE+=("$6") LEG_NOTE+=("$7") LEG_STATE+=(pending) LEG_PORT+=(0) LEG_PID+=(0) LEG_SCHEME+=("${8:-http}")
}
resolve_config() {   # a path relative to the current directory or to the repo root
    local p=$1
    if [[ -f $p ]]; then (cd "$(dirname "$p")" && echo "$PWD/$(basename "$p")"); return; fi
    die "frontgate config not found: $p"
}

FG_CONFIG=$(resolve_config "$BENCH_FRONTGATE_CONFIG")
if [[ $BENCH_TLS != only ]]; then
add_leg nginx nginx "$BENCH_PROXY_CPUS" 1 "" "" "nginx reverse proxy, 1 worker, core $BENCH_PROXY_CPUS"
add_leg frontgate frontgate "$BENCH_PROXY_CPUS" 1 "$FG_CONFIG" nginx \
    "--workers 1, core $BENCH_PROXY_CPUS, ${FG_CONFIG#"$ROOT"/}"
fi
if [[ $BENCH_TLS != 0 ]]; then
    # Both terminate TLS with the same ECDSA P-256 certificate, TLS 1.2/1.3, the same TLS 1.2 suites.
    FG_TLS_CONFIG=$(resolve_config bench/frontgate-tls.yaml)
    add_leg nginx-tls nginx "$BENCH_PROXY_CPUS" 1 "" "" "nginx terminating TLS, 1 worker, core $BENCH_PROXY_CPUS" https
    add_leg frontgate-tls frontgate "$BENCH_PROXY_CPUS" 1 "$FG_TLS_CONFIG" nginx-tls \
        "--workers 1, core $BENCH_PROXY_CPUS, ${FG_TLS_CONFIG#"$ROOT"/}" https
fi
for spec in $BENCH_EXTRA; do
    [[ $spec == *=* ]] || die "BENCH_EXTRA item '$spec' is not name=config.yaml"
    name=${spec%%=*}
    [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || die "BENCH_EXTRA name '$name' must be [A-Za-z0-9_.-]+"
    add_leg "frontgate-$name" frontgate "$BENCH_PROXY_CPUS" 1 "$(resolve_config "${spec#*=}")" nginx \
        "--workers 1, core $BENCH_PROXY_CPUS, ${spec#*=}"
done
if [[ $BENCH_WORKERS2 == 1 ]]; then
    if ((NPROC < 2)); then note "BENCH_WORKERS2=1 ignored: one CPU"; else
        add_leg nginx-w2 nginx "$ALL_CPUS" 2 "" "" "2 workers on cores $ALL_CPUS: shares cores with wrk and the upstream"
        add_leg frontgate-w2 frontgate "$ALL_CPUS" 2 "$FG_CONFIG" nginx-w2 \
            "--workers 2 on cores $ALL_CPUS, ${FG_CONFIG#"$ROOT"/}: shares cores with wrk and the upstream"
    fi
fi
NLEGS=${#LEG_NAME[@]}

read -r -a PORTS <<<"$(free_ports $((NLEGS + 1)))"
UP_PORT=${PORTS[0]}
for ((i = 0; i < NLEGS; i++)); do LEG_PORT[i]=${PORTS[i + 1]}; done
export FG_BENCH_UPSTREAM_PORT=$UP_PORT FG_BENCH_UPSTREAM="http://127.0.0.1:$UP_PORT"

# --- nginx configs -------------------------------------------------------------------------------------
NGINX_V=$("$BENCH_NGINX" -V 2>&1)
temp_paths() {   # DIR -> temp path directives for every module compiled in, all inside DIR
    local d=$1 m
    mkdir -p "$d"
    echo "client_body_temp_path $d/body; proxy_temp_path $d/proxy;"
    for m in fastcgi uwsgi scgi; do
        [[ $NGINX_V == *"--without-http_${m}_module"* ]] || echo "${m}_temp_path $d/$m;"
    done
}

if [[ $BENCH_TLS != 0 ]]; then
    command -v openssl >/dev/null || die "openssl not found (needed for the TLS legs' certificate)"
    mkdir -p "$WORK/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench.example.com" \
        -addext "subjectAltName=DNS:bench.example.com" -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" \
        2>/dev/null || die "openssl could not make the TLS legs' certificate"
    chmod 644 "$WORK/tls/key.pem"   # nginx workers run unprivileged when started as root
    export FG_BENCH_TLS_CERT="$WORK/tls/cert.pem" FG_BENCH_TLS_KEY="$WORK/tls/key.pem"
fi
# The TLS 1.2 suites frontgate allows (frontgate/server/tls.py), so both sides negotiate alike.
TLS12_CIPHERS="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
TLS12_CIPHERS+=":ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

mkdir -p "$WORK/www"
head -c 16384 /dev/urandom >"$WORK/www/16k"
chmod 755 "$WORK/www"
chmod 644 "$WORK/www/16k"

write_upstream_conf() {
    local d="$WORK/upstream"
    mkdir -p "$d"
    cat >"$d/nginx.conf" <<EOF
# UPSTREAM origin for the benchmark (generated by bench/run.sh)
worker_processes 1;
pid $d/nginx.pid;
error_log $RUN_DIR/logs/upstream-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $(temp_paths "$d/tmp")
    server_tokens off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location = /plain { default_type text/plain; return 200 "ok\n"; }
        location = /16k { root $WORK/www; }
        location / { return 404; }
    }
}
EOF
}

write_proxy_conf() {   # LEG_INDEX
    local i=$1 d="$WORK/${LEG_NAME[$1]}" listen_tls=""
    mkdir -p "$d"
    if [[ ${LEG_SCHEME[i]} == https ]]; then
        listen_tls="ssl;
        ssl_certificate $FG_BENCH_TLS_CERT;
        ssl_certificate_key $FG_BENCH_TLS_KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers $TLS12_CIPHERS;
        ssl_prefer_server_ciphers on"
    fi
    cat >"$d/nginx.conf" <<EOF
# nginx as the reference REVERSE PROXY (generated by bench/run.sh)
worker_processes ${LEG_WORKERS[i]};
pid $d/nginx.pid;
error_log $RUN_DIR/logs/${LEG_NAME[i]}-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $(temp_paths "$d/tmp")
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    upstream origin {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${LEG_PORT[i]} backlog=4096 $listen_tls;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # roughly the header work frontgate does on every request (SPEC section 3, Forwarding)
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
EOF
}

# --- machine info --------------------------------------------------------------------------------------
META="$RUN_DIR/meta.tsv"
meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }
: >"$META"
CPU_MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
FG_PY=$(dirname "$BENCH_FRONTGATE")/python
meta date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
meta host "$(uname -srm)"
meta nproc "$NPROC"
meta cpu "${CPU_MODEL:-unknown}"
meta loadavg "$(cut -d" " -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
if [[ -x $FG_PY ]]; then
    meta python "$("$FG_PY" -c 'import sys; print(sys.version.split()[0], sys.implementation.name)' 2>&1)"
    meta packages "$("$FG_PY" -c '
from importlib import metadata
out = []
for name in ("frontgate", "uvloop", "httptools", "pydantic"):
    try:
        out.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        out.append(f"{name} -")
print(", ".join(out))' 2>&1)"
    meta build "$("$FG_PY" -c 'import frontgate.server.exchange as m
print("compiled (mypyc)" if m.__file__.endswith(".so") else "pure Python")' 2>&1)"
else
    meta python "no interpreter next to $BENCH_FRONTGATE"
fi
meta nginx "$("$BENCH_NGINX" -v 2>&1 | sed 's/^nginx version: //')"
meta wrk "$("$BENCH_WRK" --version 2>&1 | head -1 | awk '{print $1, $2}')"
meta git "$(git rev-parse --short HEAD 2>/dev/null || echo 'no commit')$(git status --porcelain 2>/dev/null | grep -q . && echo ' (dirty tree)')"
meta load "taskset -c $BENCH_LOAD_CPUS $BENCH_WRK -t$BENCH_THREADS -c$BENCH_CONNECTIONS -d${BENCH_SECONDS}s --latency; warm-up ${BENCH_WARMUP}s before each measurement"
meta rounds "$BENCH_ROUNDS"
meta load_cpus "$BENCH_LOAD_CPUS"
meta proxy_cpus "$BENCH_PROXY_CPUS"
meta upstream "nginx, 1 worker, core $BENCH_LOAD_CPUS: /plain = 3-byte body (return 200), /16k = 16 KiB static file"

echo "== frontgate benchmark $TS: $BENCH_ROUNDS round(s) x ${BENCH_SECONDS}s, $BENCH_CONNECTIONS connections =="

# --- start servers -------------------------------------------------------------------------------------
write_upstream_conf
start_bg "$RUN_DIR/logs/upstream.out" taskset -c "$BENCH_LOAD_CPUS" "$BENCH_NGINX" -p "$WORK/upstream" \
    -c "$WORK/upstream/nginx.conf" -e "$RUN_DIR/logs/upstream-error.log" -g 'daemon off;'
UP_PID=$LAST_PID
if ! wait_port "$UP_PORT" "$UP_PID" 10; then
    cat "$RUN_DIR/logs/upstream.out" "$RUN_DIR/logs/upstream-error.log" >&2 2>/dev/null || true
    die "the upstream nginx did not start on 127.0.0.1:$UP_PORT"
fi
"$PY" "$ROOT/bench/report.py" probe "$UP_PORT" >/dev/null || die "the upstream nginx answers wrongly"
echo "upstream nginx    127.0.0.1:$UP_PORT (pid $UP_PID, cpus $BENCH_LOAD_CPUS)"

start_leg() {   # LEG_INDEX
    local i=$1 name=${LEG_NAME[$1]} log="$RUN_DIR/logs/${LEG_NAME[$1]}.out" rc=0 problem
    if [[ ${LEG_KIND[i]} == nginx ]]; then
        write_proxy_conf "$i"
        start_bg "$log" taskset -c "${LEG_CPUS[i]}" "$BENCH_NGINX" -p "$WORK/$name" -c "$WORK/$name/nginx.conf" \
            -e "$RUN_DIR/logs/$name-error.log" -g 'daemon off;'
    else
        if [[ ! -x $BENCH_FRONTGATE ]]; then
            LEG_STATE[i]=failed LEG_NOTE[i]="did not start: $BENCH_FRONTGATE not found"
            printf '%-17s DID NOT START: %s not found\n' "$name" "$BENCH_FRONTGATE"
            return
        fi
        export FG_BENCH_PORT=${LEG_PORT[i]}
        start_bg "$log" taskset -c "${LEG_CPUS[i]}" \
            "$BENCH_FRONTGATE" run -c "${LEG_CONFIG[i]}" --workers "${LEG_WORKERS[i]}"
    fi
    LEG_PID[i]=$LAST_PID
    wait_port "${LEG_PORT[i]}" "$LAST_PID" "$BENCH_START_TIMEOUT" || rc=$?
    if ((rc == 0)); then
        if problem=$("$PY" "$ROOT/bench/report.py" probe "${LEG_SCHEME[i]}:${LEG_PORT[i]}" 2>&1); then
            LEG_STATE[i]=up
            printf '%-17s 127.0.0.1:%s (pid %s, cpus %s)\n' "$name" "${LEG_PORT[i]}" "$LAST_PID" "${LEG_CPUS[i]}"
            return
        fi
        LEG_NOTE[i]="did not start: wrong answers ($problem)"
    elif ((rc == 1)); then
        LEG_NOTE[i]="did not start: port ${LEG_PORT[i]} not open after ${BENCH_START_TIMEOUT}s"
    else
        LEG_NOTE[i]="did not start: the process exited"
    fi
    LEG_STATE[i]=failed
    printf '%-17s DID NOT START: %s\n' "$name" "${LEG_NOTE[i]#did not start: }"
    echo "  --- last lines of $log ---"
    tail -n 15 "$log" 2>/dev/null | sed 's/^/  | /'
    kill -TERM -- "-$LAST_PID" 2>/dev/null || true   # stop it now; cleanup() reaps it
}

for ((i = 0; i < NLEGS; i++)); do start_leg "$i"; done
echo

# --- measure -------------------------------------------------------------------------------------------
wrk_run() {   # PORT SCENARIO SECONDS OUTFILE PGID SCHEME
    local rc=0 path=$2 close=""
    if [[ $2 == handshake ]]; then path=plain close="Connection: close"; fi
    "$PY" "$ROOT/bench/report.py" cputicks "$5" >"${4%.txt}.cpu0" 2>/dev/null || true
    grep '^cpu[0-9]' /proc/stat >"${4%.txt}.stat0" 2>/dev/null || true
    # In the background + `wait`, so that Ctrl-C/SIGTERM run the trap at once (bash defers traps while a
    # foreground child runs, and drops SIGINT when that child exits normally, as wrk does on SIGINT).
    timeout -k 5 $(($3 + 30)) taskset -c "$BENCH_LOAD_CPUS" "$BENCH_WRK" -t"$BENCH_THREADS" \
        -c"$BENCH_CONNECTIONS" -d"$3s" --latency ${BENCH_HEADER:+-H "$BENCH_HEADER"} ${close:+-H "$close"} \
        "$6://127.0.0.1:$1/$path" >"$4" 2>&1 </dev/null 9>&- &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=
    grep '^cpu[0-9]' /proc/stat >"${4%.txt}.stat1" 2>/dev/null || true
    "$PY" "$ROOT/bench/report.py" cputicks "$5" >"${4%.txt}.cpu1" 2>/dev/null || true
    ((rc == 0)) || echo "wrk exited with status $rc" >>"$4"
}

for ((r = 1; r <= BENCH_ROUNDS; r++)); do
    for sc in $BENCH_SCENARIOS; do
        for ((i = 0; i < NLEGS; i++)); do
            [[ ${LEG_STATE[i]} == up ]] || continue
            [[ $sc != handshake || ${LEG_SCHEME[i]} == https ]] || continue
            name=${LEG_NAME[i]}
            if ((BENCH_WARMUP > 0)); then
                wrk_run "${LEG_PORT[i]}" "$sc" "$BENCH_WARMUP" "$RUN_DIR/wrk/$name.$sc.r$r.warmup.txt" "${LEG_PID[i]}" \
                    "${LEG_SCHEME[i]}"
            fi
            out="$RUN_DIR/wrk/$name.$sc.r$r.txt"
            wrk_run "${LEG_PORT[i]}" "$sc" "$BENCH_SECONDS" "$out" "${LEG_PID[i]}" "${LEG_SCHEME[i]}"
            printf '[round %d/%d] %-6s %-17s %s\n' "$r" "$BENCH_ROUNDS" "$sc" "$name" \
                "$("$PY" "$ROOT/bench/report.py" line "$out")"
            if ! alive "${LEG_PID[i]}"; then
                LEG_STATE[i]=crashed LEG_NOTE[i]="CRASHED during round $r ($sc): see $RUN_DIR/logs/$name.out"
                echo "  !!! $name died; last lines of its log:"
                tail -n 15 "$RUN_DIR/logs/$name.out" 2>/dev/null | sed 's/^/  | /'
            fi
        done
    done
done

# --- report --------------------------------------------------------------------------------------------
LEGS="$RUN_DIR/legs.tsv"
: >"$LEGS"
for ((i = 0; i < NLEGS; i++)); do
    printf '%s\t%s\t%s\t%s\t%s\n' "${LEG_NAME[i]}" "${LEG_KIND[i]}" "${LEG_BASE[i]}" "${LEG_STATE[i]}" \
        "${LEG_NOTE[i]}" >>"$LEGS"
done
echo
rc=0
"$PY" "$ROOT/bench/report.py" report "$RUN_DIR" >"$RESULTS/$TS.md" || rc=$?
cat "$RESULTS/$TS.md"
echo
echo "written: bench/results/$TS.md (raw wrk output and logs in bench/results/$TS/)"
exit "$rc"
}
