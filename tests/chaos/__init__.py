"""The chaos run (issue 19): the three-broker cluster, several service instances and a steady feed
inside private network namespaces; a seeded random nemesis (kills, pauses, partitions, rebalances)
for minutes; then an independent reader, Kafka's own Java consumer, and a checker over the whole
history. ``python -m tests.chaos --help``; the CI's short runs are ``pytest -m chaos``.
"""
