#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers at 127.0.0.1:5672 (guest/guest).
# Starts it when it is installed but down; installs it with apt-get when it is
# missing; waits for `rabbitmqctl await_startup`. Says what to do when it cannot.
set -euo pipefail

HOST=127.0.0.1
PORT=5672

say() { echo "ensure-rabbitmq: $*" >&2; }

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null && exec 3>&- 3<&- 2>/dev/null
}

need_root() {
    if [ "$(id -u)" != "0" ]; then
        say "RabbitMQ is $1 and this needs root. Run 'sudo $0', or start a broker"
        say "yourself at $HOST:$PORT with user guest/guest, then run make again."
        exit 1
    fi
}

if port_open && command -v rabbitmqctl >/dev/null 2>&1 \
        && timeout 60 rabbitmqctl await_startup >/dev/null 2>&1; then
    exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    need_root "not installed"
    if ! command -v apt-get >/dev/null 2>&1; then
        say "RabbitMQ is not installed and there is no apt-get here."
        say "Install rabbitmq-server with your package manager, start it, and run make again."
        exit 1
    fi
    say "installing rabbitmq-server with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server >/dev/null
fi

if ! port_open; then
    need_root "installed but not running"
    say "starting rabbitmq-server"
    rabbitmq-server -detached >/dev/null 2>&1 || true
fi

if ! timeout 180 rabbitmqctl await_startup >/dev/null 2>&1; then
    say "RabbitMQ did not start within 180 s; see /var/log/rabbitmq/ for why."
    exit 1
fi
for _ in $(seq 1 100); do
    port_open && break
    sleep 0.1
done
if ! port_open; then
    say "RabbitMQ is up but nothing listens on $HOST:$PORT; check its listeners config."
    exit 1
fi
say "RabbitMQ is up at $HOST:$PORT"
