"""Picsellia: monitor a deployment with Tessera's predictions, online or from a batch job.

One module per job: `connectors.picsellia.client` (plain ``requests`` to the main and
monitoring hosts, behind the job's gate), `connectors.picsellia.format` (``raw_predictions``
and monitoring bodies, pure, checked by the SDK's models), `connectors.picsellia.exporter`
(``format="picsellia"``), `connectors.picsellia.uploader` (``to="picsellia"`` and
``--monitor picsellia``) and `connectors.picsellia.plugin`, whose ``PLATFORM`` the
``tessera.platforms`` entry point names. Importing this package loads neither the SDK nor Ray.
"""
