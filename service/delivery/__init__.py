"""The delivery shell: consume, process with the core, produce, commit.

The decisions (``routing``, ``plans``) are pure and unit-tested; the rest does the I/O: the
clients' one configuration (``clients``), the start-up checks (``topics``, ``connection``), the
mapping of Kafka's errors to the service's failures (``failures``), and the loop.
"""
