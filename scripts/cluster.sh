#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster for the cluster tests, beside the default broker.
#
#   scripts/cluster.sh start              start the nodes that are down; join them; wait until ready
#   scripts/cluster.sh stop               stop our three nodes and delete their data
#   scripts/cluster.sh status             which of our nodes run (exit 0 only when all three are up)
#   scripts/cluster.sh pid NODE           the beam pid of node a, b or c (for kill -9 / SIGSTOP)
#   scripts/cluster.sh stop-node NODE     stop one node cleanly, keeping its data (start brings it back)
#   scripts/cluster.sh ctl NODE ARGS...   rabbitmqctl against that node (with our cookie)
#
# Nodes geamqp-a/b/c@localhost, AMQP on 127.0.0.1:5673/5674/5675, Erlang distribution on
# 25673/25674/25675, one Erlang cookie, each node its own config file, data and logs under
# $GEAMQP_CLUSTER_DIR (default /tmp/geamqp-cluster), no plugins. The default broker
# (rabbit@localhost on 5672, /etc/rabbitmq) is never read, written or signalled: the system
# env file is replaced by our own, every process is found through its pid file and checked
# against RABBITMQ_NODENAME in its environment, never by a process name.
#
# `start` is idempotent: nodes already up are left alone, a frozen (SIGSTOPped) node of ours is
# sent SIGCONT, a node that was killed is started again on its data and rejoins the cluster.
# When none of our nodes runs, stale data is wiped and a fresh cluster is formed: node a first,
# then b and c together, joining a through classic-config peer discovery.
set -euo pipefail

BASE=${GEAMQP_CLUSTER_DIR:-${TMPDIR:-/tmp}/geamqp-cluster}
case $BASE in
    /?*/*) ;;  # `stop` deletes it: only an absolute path at least two levels deep
    *) echo "cluster: GEAMQP_CLUSTER_DIR must be an absolute path like /tmp/x/y: $BASE" >&2; exit 2 ;;
esac
NODES=(a b c)
RMQ_BIN=/usr/lib/rabbitmq/bin
START_TIMEOUT=${GEAMQP_CLUSTER_START_TIMEOUT:-120}

say() { echo "cluster: $*" >&2; }

node_name() { echo "geamqp-$1@localhost"; }
amqp_port() { case $1 in a) echo 5673 ;; b) echo 5674 ;; c) echo 5675 ;; esac; }
dist_port() { echo $(( $(amqp_port "$1") + 20000 )); }

check_node() {
    case ${1:-} in
        a | b | c) ;;
        *) say "unknown node '${1:-}': use a, b or c"; exit 2 ;;
    esac
}

# Environment of one node's processes (server and CLI): everything under $BASE.
node_env() {
    local n=$1 dir=$BASE/$1
    echo "HOME=$BASE/home"
    echo "RABBITMQ_CONF_ENV_FILE=$BASE/rabbitmq-env.conf"
    echo "RABBITMQ_NODENAME=$(node_name "$n")"
    echo "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
    echo "RABBITMQ_NODE_PORT=$(amqp_port "$n")"
    echo "RABBITMQ_DIST_PORT=$(dist_port "$n")"
    echo "RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf"
    echo "RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config"
    echo "RABBITMQ_ENABLED_PLUGINS_FILE=$BASE/enabled_plugins"
    echo "RABBITMQ_MNESIA_BASE=$dir/mnesia"
    echo "RABBITMQ_MNESIA_DIR=$dir/mnesia/$(node_name "$n")"
    echo "RABBITMQ_PLUGINS_EXPAND_DIR=$dir/mnesia/plugins-expand"
    echo "RABBITMQ_LOG_BASE=$dir/log"
    echo "RABBITMQ_PID_FILE=$dir/pid"
    echo "ERL_EPMD_ADDRESS=127.0.0.1"
    echo "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
}

with_node_env() {
    local n=$1
    shift
    local -a envs
    mapfile -t envs < <(node_env "$n")
    env -u ERL_FLAGS -u RABBITMQ_NODENAME "${envs[@]}" "$@"
}

# The CLI gets the node through -n, not RABBITMQ_NODENAME: only server processes carry
# that variable, which is how a node whose pid file is gone is still found.
ctl() {
    local n=$1
    shift
    # A CLI that cannot reach its node must not leave erl_crash.dump in the caller's folder.
    with_node_env "$n" env -u RABBITMQ_NODENAME ERL_CRASH_DUMP_SECONDS=0 \
        "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

# The pid of node $1's beam when it runs: read from its pid file and confirmed by the
# node name in that process's environment (a recycled pid is never taken for ours).
is_node_process() {
    local pid=$1 n=$2
    [ -n "$pid" ] && [ -r "/proc/$pid/environ" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "beam.smp" ] || return 1
    { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null \
        | grep -qx "RABBITMQ_NODENAME=$(node_name "$n")" || return 1
    # A zombie (killed, not yet reaped) is not a running node.
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ]
}

node_pid() {
    local n=$1 pid
    if [ -f "$BASE/$n/pid" ]; then
        pid=$(tr -dc '0-9' <"$BASE/$n/pid")
        is_node_process "$pid" "$n" && { echo "$pid"; return 0; }
    fi
    # No pid file (its folder was deleted under a running node): look for the beam whose
    # environment names exactly this node.
    local proc
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        is_node_process "$pid" "$n" && { echo "$pid"; return 0; }
    done
    return 1
}

node_state() { awk '{print $3}' "/proc/$1/stat" 2>/dev/null; }

write_files() {
    mkdir -p "$BASE/home"
    chmod 700 "$BASE" "$BASE/home"
    if [ ! -s "$BASE/home/.erlang.cookie" ]; then
        (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -dc '0-9a-f' \
            >"$BASE/home/.erlang.cookie")
        chmod 400 "$BASE/home/.erlang.cookie"
    fi
    : >"$BASE/rabbitmq-env.conf"
    echo "[]." >"$BASE/enabled_plugins"
    local n
    for n in "${NODES[@]}"; do
        mkdir -p "$BASE/$n/mnesia" "$BASE/$n/log"
        # The system config pins the listener to 5672: each node gets its own file.
        # Peer discovery only matters for a blank node; it joins node a.
        cat >"$BASE/$n/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
cluster_name = geamqp-test
log.console = false
log.file.level = info
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = $(node_name a)
# A node frozen longer than net_ticktime (60 s) and thawed finds itself partitioned from
# the others; with the default (ignore) the cluster would stay split for every later test.
cluster_partition_handling = autoheal
EOF
        echo "[]." >"$BASE/$n/advanced.config"
    done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

launch() {
    local n=$1
    if port_in_use "$(amqp_port "$n")" || port_in_use "$(dist_port "$n")"; then
        say "port $(amqp_port "$n") or $(dist_port "$n") is taken by another process;" \
            "not starting $(node_name "$n")"
        return 1
    fi
    rm -f "$BASE/$n/pid"
    say "starting $(node_name "$n") on port $(amqp_port "$n")"
    with_node_env "$n" "$RMQ_BIN/rabbitmq-server" -detached \
        >>"$BASE/$n/log/startup.log" 2>&1
}

await_node() {
    local n=$1 deadline=$(( SECONDS + START_TIMEOUT ))
    while (( SECONDS < deadline )); do
        if node_pid "$n" >/dev/null \
                && ctl "$n" await_startup --timeout 10 >/dev/null 2>&1 \
                && port_in_use "$(amqp_port "$n")"; then
            return 0
        fi
        sleep 0.5
    done
    say "$(node_name "$n") not ready after ${START_TIMEOUT} s; see $BASE/$n/log"
    return 1
}

running_nodes_seen_by() {
    ctl "$1" eval 'rabbit_nodes:all_running().' 2>/dev/null | tr -d '[]\n '
}

in_cluster() {
    local seen
    seen=$(running_nodes_seen_by a) || return 1
    [[ ",$seen," == *",'$(node_name "$1")',"* ]]
}

# One CLI call: "true" when every node runs the rabbit app and sees all three running
# (no partition, nobody left out). Asked through the first node that answers.
healthy() {
    local n names expr
    names=$(printf "'%s'," "$(node_name a)" "$(node_name b)" "$(node_name c)")
    expr="Ns = [${names%,}], Vs = [rpc:call(N, rabbit_nodes, all_running, [], 5000) || N <- Ns],"
    expr+=" lists:all(fun(V) -> is_list(V) andalso lists:sort(V) =:= lists:sort(Ns) end, Vs)."
    for n in "${NODES[@]}"; do
        node_pid "$n" >/dev/null || continue
        [ "$(ctl "$n" eval "$expr" 2>/dev/null)" = "true" ] && return 0
        return 1
    done
    return 1
}

# A partition left over (autoheal still at work, or a node that missed it): restart the
# rabbit app of each node that sees fewer nodes than the largest view, and wait.
heal() {
    local n seen count best=0 deadline=$(( SECONDS + 15 ))
    local -A counts=()
    while (( SECONDS < deadline )); do
        healthy && return 0
        sleep 1
    done
    for n in "${NODES[@]}"; do
        seen=$(running_nodes_seen_by "$n") || seen=""
        count=$(tr ',' '\n' <<<"$seen" | grep -c . || true)
        counts[$n]=$count
        (( count > best )) && best=$count
    done
    for n in "${NODES[@]}"; do
        if (( counts[$n] < best )); then
            say "$(node_name "$n") sees ${counts[$n]} of 3 running nodes: restarting its app"
            ctl "$n" stop_app >/dev/null
            ctl "$n" start_app >/dev/null
        fi
    done
    ctl a await_online_nodes 3 --timeout 60 >/dev/null
    healthy || { say "nodes still disagree on who is running"; return 1; }
}

# A blank node that formed a cluster of its own (a discovery race) is reset into a's.
ensure_joined() {
    local n=$1
    in_cluster "$n" && return 0
    say "$(node_name "$n") is not in the cluster; joining it to $(node_name a)"
    ctl "$n" stop_app >/dev/null
    ctl "$n" reset >/dev/null
    ctl "$n" join_cluster "$(node_name a)" >/dev/null
    ctl "$n" start_app >/dev/null
}

cmd_start() {
    local n pid any_up=no
    local -a down=()
    for n in "${NODES[@]}"; do
        if pid=$(node_pid "$n"); then
            any_up=yes
            if [ "$(node_state "$pid")" = "T" ]; then
                say "$(node_name "$n") was frozen; sending SIGCONT to $pid"
                kill -CONT "$pid"
            fi
        else
            down+=("$n")
        fi
    done
    if [ ${#down[@]} -eq 0 ]; then
        healthy || { for n in "${NODES[@]}"; do await_node "$n"; done; heal; }
        say "already up"
        return 0
    fi
    if [ "$any_up" = no ]; then
        rm -rf "$BASE"  # stale data of a cluster that is gone: start fresh
        write_files
        launch a
        await_node a
        down=(b c)
    fi
    for n in "${down[@]}"; do launch "$n"; done
    for n in "${down[@]}"; do await_node "$n"; done
    for n in b c; do ensure_joined "$n"; done
    ctl a await_online_nodes 3 --timeout 60 >/dev/null
    heal
    say "up: $(for n in "${NODES[@]}"; do printf '%s ' "$(node_name "$n")"; done)"
}

stop_one() {
    local n=$1 pid i
    pid=$(node_pid "$n") || return 0
    [ "$(node_state "$pid")" = "T" ] && kill -CONT "$pid"
    ctl "$n" stop --timeout 30 >/dev/null 2>&1 || true
    for i in $(seq 1 100); do
        node_pid "$n" >/dev/null || return 0
        sleep 0.1
    done
    if pid=$(node_pid "$n"); then
        say "$(node_name "$n") did not stop; kill -9 $pid"
        kill -9 "$pid" 2>/dev/null || true
    fi
}

cmd_stop() {
    local n
    for n in "${NODES[@]}"; do stop_one "$n" & done
    wait
    # epmd (shared with the default broker) is left running.
    rm -rf "$BASE"
    say "stopped"
}

cmd_status() {
    local n pid up=0
    for n in "${NODES[@]}"; do
        if pid=$(node_pid "$n"); then
            up=$(( up + 1 ))
            local state=running
            [ "$(node_state "$pid")" = "T" ] && state=frozen
            echo "$(node_name "$n") port $(amqp_port "$n") pid $pid $state"
        else
            echo "$(node_name "$n") port $(amqp_port "$n") down"
        fi
    done
    [ "$up" -eq ${#NODES[@]} ] || return 1
    healthy || { echo "not healthy: a node's app is down or the nodes disagree (partition)"; return 1; }
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    pid) check_node "${2:-}"; node_pid "$2" ;;
    stop-node) check_node "${2:-}"; stop_one "$2" ;;
    ctl) check_node "${2:-}"; n=$2; shift 2; ctl "$n" "$@" ;;
    *) echo "usage: $0 start|stop|status|pid NODE|stop-node NODE|ctl NODE ARGS..." >&2; exit 2 ;;
esac
