"""The service benchmark (``python scripts/bench_service.py``) as a small package. Not a test.

``cli`` reads the command line and starts or finds the broker; ``run`` holds one sitting (the
datasets, the alternating drains, the profiled drains, the paced latency runs) of the ``impls``
under test, each run of one of them made by ``runner``; ``children`` are the
processes it starts beside the service (the passthrough, the FastStream and confluent-kafka peers,
the latency pacer and reader); ``measure`` samples /proc and waits on high watermarks; ``profile``
files py-spy's samples under the per-stage headings; ``stats`` and ``report`` turn the runs into
medians, ratios, targets, tables and JSON. ``service_api`` is the one module that imports the
service's own code (its client configuration, its ``Outbox``, its core), so a move in ``service/``
is one edit here; ``data`` makes and loads the records.
"""
