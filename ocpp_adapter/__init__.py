"""OCPP-J 1.6 / 2.0.1 endpoint: WebSocket server, schema checks, OCPP <-> ChargerEvent.

This package knows nothing of consensus: it turns charger messages into `ChargerEvent`s,
hands them to an `Ingest` implementation and relays the reply that comes back.
"""
