"""Monitoring and tracing backends for the tests, run as local processes on loopback.

``prometheus`` (Debian's package: the server and ``promtool``), ``zipkin`` (the server's jar from
Maven Central, cached like the Kafka jars), ``jaeger`` (a binary built once with Go, used only where
cached) and ``otlp`` (an OTLP/HTTP receiver inside the test process). ``fixtures`` holds their pytest
fixtures (loaded by ``tests/conftest.py``); ``python -m tests.backends`` fetches, builds and runs
them by hand.
"""
