"""Test infrastructure for integration tests against the real RabbitMQ.

- ``faultproxy.FaultProxy``: a TCP proxy that resets, blackholes, throttles, refuses.
- ``tlsfront.TLSFront``: TLS termination with trustme certificates, records SNI.
- ``broker``: rabbitmqctl helpers (force-close, queue counters, alarms, vhosts).
- ``rawamqp.RawAMQP``: a hand-driven AMQP peer to test the above without geamqp.
"""
