"""The Authority's HTTP surface (aiohttp): ``create_app`` in :mod:`.app` builds it from Settings.

Modules, one job each: ``app`` (composition root), ``state`` (app keys, the executor hop),
``auth`` (bearer tokens → principals), ``problems`` (problem+json errors), ``models`` (request
bodies and queries), ``routes_proposals`` / ``routes_missions`` (thin handlers), ``check_routes``
(authorization checks), ``openapi``, ``metrics`` (Prometheus text) and ``server`` (run, signals).
"""
