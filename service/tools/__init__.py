"""The operator tools beside the service: ``produce``, ``redrive``, ``demo`` (with the embedded
broker of ``broker``), and what the sub-commands share (``command``). Nothing in the service imports
them.
"""
