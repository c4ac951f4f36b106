"""The functional core: marker text in, article events and dead letters out.

Pure: no Kafka client, no logging, no settings. ``parser`` finds the fields, ``validation`` turns
them into an article, ``events`` builds the events of a whole payload (its entry points; the Python
record path is ``reference``, what goes in and out ``message``, a redriven message's origin
``origin``), ``limits`` bounds what one payload may cost. The optional C speedups (``_speedups.c``)
hold the scanner of clean payloads and the compiled record path, which ``events`` uses for clean
payloads of valid records.
"""
