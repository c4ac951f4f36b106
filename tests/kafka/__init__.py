"""A local Apache Kafka for the test suites and for trying the service by hand (``python -m tests.kafka``)."""
