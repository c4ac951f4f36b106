"""The delivery shell: consume, process with the core, produce, commit.

``ingestor`` is the lifecycle (start, run, stop, the exit status); ``pipeline`` the loop (fetch,
process, hand over); ``batch`` a fetched batch's books; ``modes`` how handed-over batches become
delivered (at least once, or exactly once in Kafka transactions); ``outbox`` the record batches per
output partition. Its decisions (``routing``, ``resend``) are pure and unit-tested; ``retry`` and
``grace`` are how it waits.
"""
