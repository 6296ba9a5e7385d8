# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-disruptive bench lint broker venv clean cluster cluster-stop

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

broker:
	@bash scripts/ensure-rabbitmq.sh

# 10 s of confirmed publishing and consuming while the tool's own connections
# are reset every 2 s: rates, latency, recoveries, and lost = 0.
demo: venv broker
	$(PY) -m geamqp perf --duration 10 --producers 2 --consumers 2 --confirm 200 --rate 2500 \
		--multi-ack-every 20 --chaos 2 --republish-unconfirmed

# Everything except the tests that disturb the whole broker, in parallel-safe
# order; then those, one at a time; then the failover tests on a local 3-node
# cluster (started and stopped by their fixture unless `make cluster` runs one).
test: venv broker
	$(PY) -m pytest -m "not broker_disruptive and not cluster" -q
	$(PY) -m pytest -m broker_disruptive -q; rc=$$?; \
		if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi
	$(PY) -m pytest -m cluster -q tests/cluster

# A local 3-node RabbitMQ cluster on ports 5673-5675 beside the default broker.
cluster:
	@bash scripts/cluster.sh start

cluster-stop:
	@bash scripts/cluster.sh stop

# Prints each table; benchmarks/RESULTS.md keeps the latest ones with their analysis.
bench: venv broker
	$(PY) benchmarks/codec.py
	$(PY) benchmarks/compare.py --repeat 3
	$(PY) benchmarks/threads.py
	$(PY) benchmarks/fanout.py

lint: venv
	$(PY) -m ruff check geamqp tests benchmarks examples
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The pika drop-in (geamqp.pika) alone; `make test` runs these too.
.PHONY: test-compat
test-compat: venv broker
	$(PY) -m pytest tests/compat -m "not broker_disruptive" -q

# A real Celery gevent worker on geamqp and on py-amqp, heartbeats 2 s and off
# (several minutes: py-amqp with heartbeats on takes about 4 minutes alone).
.PHONY: bench-celery
bench-celery: venv broker
	$(PY) benchmarks/celery_gevent.py --transport geamqp,pyamqp --heartbeat 2,0
