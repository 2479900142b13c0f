"""The web console at ``/console``: server-rendered pages on top of the admin API.

Pages call the admin API (``/admin/v1``) with the signed-in operator's own token, so whatever
the API allows or refuses for that token is exactly what the console shows; see
:mod:`gateway.console.app`.
"""
