"""Kognic: export OpenLABEL (``format="openlabel"``) or upload it into a predictions group.

One module per job: `connectors.kognic.client` (``kognic-auth``'s session behind the job's
gate), `connectors.kognic.format` (OpenLABEL of one image, pure), `connectors.kognic.scenes`
(images to scenes), `connectors.kognic.groups` (predictions groups),
`connectors.kognic.exporter`, `connectors.kognic.uploader` (``to="kognic"``) and
`connectors.kognic.plugin`, whose ``PLATFORM`` the ``tessera.platforms`` entry point names.
Importing this package loads neither ``kognic-auth`` nor Ray.
"""
