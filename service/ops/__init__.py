"""Operating the service: the HTTP endpoint, metrics, the safety switch and the logs.

Nothing here knows Kafka: the delivery shell feeds these pieces, they never call it.
"""
