"""The functional core: marker text in, article events and dead letters out.

Pure: no Kafka client, no logging, no settings. ``parser`` finds the fields (with the optional C
scanner, ``_speedups.c``), ``validation`` turns them into an article, ``events`` builds the events
of a whole payload, ``limits`` bounds what one payload may cost.
"""
