#!/usr/bin/env bash
# A local 3-node NATS JetStream cluster on loopback, for imstore's cluster feature and its tests.
#
#   scripts/nats-cluster.sh up DIR        start nodes 1-3 (those not running), wait until ready
#   scripts/nats-cluster.sh down DIR      stop every node started in DIR (by PID)
#   scripts/nats-cluster.sh kill DIR N    SIGKILL node N (1-3), for chaos tests
#   scripts/nats-cluster.sh start DIR N   start node N again and wait for its client port
#   scripts/nats-cluster.sh urls DIR      print the client URLs, comma-separated
#
# Ports: NATS_PORT_BASE (default 4222) gives node N the client port BASE+N-1, the cluster
# (route) port BASE+2000+N-1 and the monitoring port BASE+4000+N-1: 4222-4224, 6222-6224 and
# 8222-8224 by default. Everything listens on 127.0.0.1 only. Each node keeps its JetStream
# data in DIR/nN/ and writes DIR/nN.conf, DIR/nN.log and DIR/nN.pid.
# NATS_WAIT_SECS (default 20) bounds every wait. Needs `nats-server` (Debian: apt-get install
# nats-server) on PATH or in NATS_SERVER.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z $cmd || -z $dir ]]; then
    sed -n '2,16p' "$0" >&2
    exit 2
fi
base=${NATS_PORT_BASE:-4222}
wait_secs=${NATS_WAIT_SECS:-20}
server=${NATS_SERVER:-$(command -v nats-server || true)}

client_port() { echo $((base + $1 - 1)); }
route_port() { echo $((base + 2000 + $1 - 1)); }
http_port() { echo $((base + 4000 + $1 - 1)); }

alive() { # node
    local pidf="$dir/n$1.pid"
    [[ -f $pidf ]] && kill -0 "$(cat "$pidf")" 2>/dev/null
}

port_open() { # port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# GET http://127.0.0.1:PORT/PATH with bash alone; prints the status code.
http_status() { # port path
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
    IFS= read -r -t 2 line <&3 || true
    exec 3<&- 3>&-
    line=${line#HTTP/* }
    echo "${line%% *}"
}

write_conf() { # node
    local n=$1 routes="" i
    for i in 1 2 3; do
        routes+="    nats-route://127.0.0.1:$(route_port "$i")"$'\n'
    done
    mkdir -p "$dir/n$n"
    cat >"$dir/n$n.conf" <<CONF
server_name: n$n
listen: 127.0.0.1:$(client_port "$n")
http: 127.0.0.1:$(http_port "$n")
jetstream {
    store_dir: "$dir/n$n"
    max_memory_store: 256MB
    max_file_store: 4GB
}
cluster {
    name: imstore
    listen: 127.0.0.1:$(route_port "$n")
    routes: [
$routes    ]
}
CONF
}

start_node() { # node
    local n=$1
    if alive "$n"; then
        return 0
    fi
    write_conf "$n"
    nohup "$server" -c "$dir/n$n.conf" >>"$dir/n$n.log" 2>&1 </dev/null &
    echo $! >"$dir/n$n.pid"
}

wait_until() { # description, command...
    local what=$1
    shift
    local deadline=$((SECONDS + wait_secs))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            echo "nats-cluster: timed out after ${wait_secs}s waiting for $what (logs in $dir)" >&2
            return 1
        fi
        sleep 0.1
    done
}

# JetStream is ready on a node when /healthz answers 200 (it does once the node knows the
# JetStream meta leader).
js_ready() { # node
    [[ $(http_status "$(http_port "$1")" /healthz 2>/dev/null) == 200 ]]
}

all_ready() {
    local i
    for i in 1 2 3; do
        alive "$i" && port_open "$(client_port "$i")" && js_ready "$i" || return 1
    done
}

stop_node() { # node, signal
    local n=$1 sig=$2 pid
    [[ -f $dir/n$n.pid ]] || return 0
    pid=$(cat "$dir/n$n.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill "-$sig" "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + wait_secs))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.05
        done
    fi
    rm -f "$dir/n$n.pid"
}

case $cmd in
up)
    if [[ -z $server || ! -x $server ]]; then
        echo "nats-cluster: nats-server not found (Debian: apt-get install nats-server)" >&2
        exit 3
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    for n in 1 2 3; do start_node "$n"; done
    wait_until "3 nodes with JetStream ready" all_ready
    echo "nats://127.0.0.1:$(client_port 1),nats://127.0.0.1:$(client_port 2),nats://127.0.0.1:$(client_port 3)"
    ;;
down)
    [[ -d $dir ]] || exit 0
    for n in 1 2 3; do stop_node "$n" TERM; done
    ;;
kill)
    n=${3:?node number 1-3}
    stop_node "$n" KILL
    ;;
start)
    n=${3:?node number 1-3}
    dir=$(cd "$dir" && pwd)
    start_node "$n"
    wait_until "node $n's client port" port_open "$(client_port "$n")"
    ;;
urls)
    echo "nats://127.0.0.1:$(client_port 1),nats://127.0.0.1:$(client_port 2),nats://127.0.0.1:$(client_port 3)"
    ;;
*)
    echo "nats-cluster: unknown command $cmd (up|down|kill|start|urls)" >&2
    exit 2
    ;;
esac
