"""The broker's plumbing, shared by the service and the operator tools: the clients' configuration
built once from the settings (``clients``), topic chores (``topics``), the connection probe
(``connection``) and Kafka's failures mapped to the one line an operator needs (``failures``).

Nothing here consumes, processes or delivers: that is ``service.delivery``'s.
"""
