"""Acme, a made-up labeling platform, as a Tessera plug-in: the worked example of one.

One module per job: `tessera_acme.client` (HTTP), `tessera_acme.urls` (media URLs),
`tessera_acme.inputs` (ids and local folders -> `engine.plugins.InputRef`),
`tessera_acme.fetcher` (media downloads), `tessera_acme.format` (Acme JSON, pure),
`tessera_acme.exporter` (``format="acme"``), `tessera_acme.uploader` (``to="acme"``) and
`tessera_acme.plugin`, whose ``PLATFORM`` the ``tessera.platforms`` entry point names.
"""
