"""The Labelbox ontology of a model's classes, and the model run ``upload="create"`` makes.

`ontology_for` is pure: the normalized ontology (the SDK's `OntologyBuilder` shape) whose
features are the names `connectors.labelbox.format` writes — a ``rectangle`` tool per class
(detection, keypoints), a ``raster-segmentation`` tool per class (instance segmentation), a
``point`` tool per keypoint of each class, or one radio classification whose options are
the classes (classification).

`find_or_create_run` makes the ontology, the model and its run, through a
`connectors.labelbox.client.LabelboxClient`. The run's ``trainingMetadata`` holds
``{"tessera_job": <job id>}``, so a resumed job finds its run again instead of making a
second one, and a model of that name made by anything else is refused.
"""

from __future__ import annotations

from typing import Any

from connectors.labelbox.format import CLASSIFICATION_NAME, keypoint_feature

__all__ = ["JOB_KEY", "default_model_name", "find_or_create_run", "ontology_for"]

#: The key of the job id in a created run's ``trainingMetadata``.
JOB_KEY = "tessera_job"


def ontology_for(
    class_names: list[str],
    task: str,
    num_keypoints: int | None = None,
    classification_name: str = CLASSIFICATION_NAME,
) -> dict[str, Any]:
    """The normalized ontology of ``class_names`` for ``task``.

    Raises:
        ValueError: A keypoints model without ``num_keypoints``, or an unknown task.

    Example:
        >>> [t["tool"] for t in ontology_for(["car"], "detection")["tools"]]
        ['rectangle']
    """
    from labelbox import Classification, OntologyBuilder, Option, Tool

    if task == "classification":
        radio = Classification(
            class_type=Classification.Type.RADIO,
            name=classification_name,
            options=[Option(value=name) for name in class_names],
        )
        return OntologyBuilder(classifications=[radio]).asdict()
    shapes = {
        "detection": Tool.Type.BBOX,
        "keypoints": Tool.Type.BBOX,
        "instance_segmentation": Tool.Type.RASTER_SEGMENTATION,
    }
    if task not in shapes:
        raise ValueError(f"no Labelbox ontology for task {task!r}; tasks: {sorted(shapes)}")
    tools = [Tool(tool=shapes[task], name=name) for name in class_names]
    if task == "keypoints":
        if not num_keypoints or num_keypoints < 1:
            raise ValueError(
                "upload='create' of a keypoints model to Labelbox needs "
                "upload_options={'num_keypoints': K} (a point tool per keypoint)"
            )
        tools += [
            Tool(tool=Tool.Type.POINT, name=keypoint_feature(name, j))
            for name in class_names
            for j in range(num_keypoints)
        ]
    return OntologyBuilder(tools=tools).asdict()


def find_or_create_run(
    client: Any, job_id: str, model_name: str, run_name: str, ontology: dict[str, Any]
) -> str:
    """The id of this job's model run: found again (a resume), else created.

    Args:
        client: A `connectors.labelbox.client.LabelboxClient`.
        job_id: The job (kept in the run's ``trainingMetadata``).
        model_name: The model to create (its name must be free, or this job's).
        run_name: The model run to create.
        ontology: The normalized ontology (`ontology_for`).

    Raises:
        ValueError: A model called ``model_name`` exists and holds no run of this job.
        DeliveryError: A request failed.
    """
    from labelbox import MediaType
    from labelbox.orm.model import Entity

    def find(sdk: Any) -> tuple[Any, Any]:
        for model in sdk.get_models(where=Entity.Model.name == model_name):
            for run in model.model_runs():
                if (run.training_metadata or {}).get(JOB_KEY) == job_id:
                    return model, run
            return model, None
        return None, None

    model, run = client.call(f"Labelbox: find model {model_name!r}", find)
    if run is not None:
        return str(run.uid)
    if model is not None and model_name != default_model_name(job_id):
        raise ValueError(
            f"a Labelbox model named {model_name!r} already exists; choose another "
            "model_name, or upload='append' with the model_run_id of one of its runs"
        )
    # Each creation is sent once: a lost answer must not make a second object. A job
    # whose model was made but not its run (under the job's own default model name) goes
    # on with that model when it runs again.
    if model is None:

        def create_model(sdk: Any) -> Any:
            made = sdk.create_ontology(model_name, ontology, media_type=MediaType.Image)
            return sdk.create_model(model_name, made.uid)

        model = client.call(f"Labelbox: create model {model_name!r}", create_model, retry=False)
    run = client.call(
        f"Labelbox: create model run {run_name!r}",
        lambda _: model.create_model_run(run_name, config={JOB_KEY: job_id}),
        retry=False,
    )
    return str(run.uid)


def default_model_name(job_id: str) -> str:
    """The model ``upload="create"`` makes when no ``model_name`` is given.

    Example:
        >>> default_model_name("3f2a")
        'tessera-3f2a'
    """
    return f"tessera-{job_id}"
