"""Labelbox: predict over its data rows; export NDJSON (``format="labelbox"``) or upload it.

One module per job: `connectors.labelbox.client` (the official SDK behind the job's gate),
`connectors.labelbox.urls` (``labelbox://datarows/<id>``), `connectors.labelbox.inputs`
(datasets' and model runs' data rows) and `connectors.labelbox.fetcher` (their media),
`connectors.labelbox.format` (NDJSON lines, pure), `connectors.labelbox.ontology` (the
ontology of a model's classes, the model run ``create`` makes), `connectors.labelbox.exporter`,
`connectors.labelbox.uploader` (``to="labelbox"``) and `connectors.labelbox.plugin`, whose
``PLATFORM`` the ``tessera.platforms`` entry point names. Importing this package loads
neither the SDK nor Ray.
"""
