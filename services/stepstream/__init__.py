"""Stepstream: a self-hosted durable workflow engine on Apache Kafka.

The SDK for writing workflows is :mod:`stepstream.sdk`; it imports without the engine's Kafka
dependencies. The engine's services live in the ``projector``, ``scheduler``, ``executor`` and ``api``
subpackages and need the ``server`` extra.
"""

__version__ = "0.1.0"
