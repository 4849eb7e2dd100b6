"""Labelbox inputs: the data rows of datasets and of model runs, listed through the SDK.

Each data row becomes an `engine.plugins.InputRef` named by its global key (else its
external id, else its id), with ``url`` = ``labelbox://datarows/<id>?globalKey=<key>``
and the dataset's name (a model run's rows have none), in the order Labelbox lists them;
the media is fetched by `connectors.labelbox.fetcher.LabelboxFetcher` in the decode tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connectors.labelbox.client import LabelboxClient
from connectors.labelbox.fetcher import LabelboxFetcher
from connectors.labelbox.urls import data_row_url
from engine.plugins import InputRef, PlatformInputs

__all__ = ["resolve_inputs"]


def resolve_inputs(
    dataset_ids: Sequence[str] = (),
    model_run_ids: Sequence[str] = (),
    client: LabelboxClient | None = None,
) -> PlatformInputs:
    """List the data rows of datasets and model runs, with the fetcher of their media.

    Args:
        dataset_ids: Datasets whose data rows to predict.
        model_run_ids: Model runs whose data rows to predict (an upload of the job goes
            into the run when it is the only one and no ``model_run_id`` is given).
        client: The client to ask; None builds one from the environment.

    Raises:
        DeliveryError: A dataset or run is not found, or a request failed.
    """
    client = client if client is not None else LabelboxClient()
    refs: list[InputRef] = []
    for dataset_id in dataset_ids:

        def of_dataset(sdk: Any, ident: str = dataset_id) -> tuple[str, list[Any]]:
            dataset = sdk.get_dataset(ident)
            return dataset.name, [_row(r) for r in dataset.data_rows()]

        name, rows = client.call(f"Labelbox: list data rows of dataset {dataset_id}", of_dataset)
        refs += [_ref(row, name) for row in rows]
    for run_id in model_run_ids:

        def of_run(sdk: Any, ident: str = run_id) -> list[Any]:
            run = sdk.get_model_run(ident)
            return [_row(r.data_row()) for r in run.model_run_data_rows()]

        rows = client.call(f"Labelbox: list data rows of model run {run_id}", of_run)
        refs += [_ref(row, None) for row in rows]
    sources: dict[str, Any] = {"labelbox_dataset_ids": list(dataset_ids)}
    sources["labelbox_model_run_ids"] = list(model_run_ids)
    return PlatformInputs(refs=refs, fetch=LabelboxFetcher(client), sources=sources)


def _row(data_row: Any) -> tuple[str, str | None, str | None]:
    return str(data_row.uid), data_row.global_key, data_row.external_id


def _ref(row: tuple[str, str | None, str | None], dataset: str | None) -> InputRef:
    uid, key, external = row
    return InputRef(name=key or external or uid, url=data_row_url(uid, key), dataset=dataset)
