"""Feature extraction scaled out over a Dask distributed cluster: one task per slide.

Any ``dask.distributed`` scheduler works (a ``LocalCluster`` by default; one started by
dask-jobqueue on SLURM, ...). Workers write straight into the project store, which must
be on a filesystem they share; the driver holds the store's writer lock for them. A
failed task is retried, then reported; no slide is dropped silently.
"""

from __future__ import annotations

from napari_wsi_mil.features.extract import ExtractionReport
from napari_wsi_mil.features.stain import COHORT
from napari_wsi_mil.jobs import Job, Progress, run_job
from napari_wsi_mil.store.keys import FEATURES
from napari_wsi_mil.store.project import ProjectStore


def _extract_one(root: str, slide_id: str, encoder: str, name: str, options: dict) -> dict:
    """Runs on a worker: extract one slide and return its part of the report."""
    from napari_wsi_mil.features.extract import extract_features_job

    report = run_job(
        extract_features_job(ProjectStore(root), [slide_id], encoder, name, lock=False, **options)
    )
    if slide_id in report.failed:
        raise RuntimeError(report.failed[slide_id])
    return {
        "patches": report.extracted.get(slide_id, 0),
        "warnings": report.warnings.get(slide_id, []),
        "patches_per_second": report.patches_per_second,
    }


def extract_with_dask_job(
    project: ProjectStore,
    slide_ids: list[str],
    encoder: str,
    name: str,
    *,
    scheduler: str | None = None,
    workers: int = 2,
    retries: int = 1,
    overwrite: bool = False,
    **options,
) -> Job[ExtractionReport]:
    """Submit one extraction task per slide to ``scheduler`` (or a new LocalCluster).

    ``options`` are passed to :func:`~napari_wsi_mil.features.extract.extract_features_job`
    on the workers (batch size, device, dtype, loader workers).
    """
    from distributed import Client, LocalCluster, as_completed

    report = ExtractionReport()
    todo = [s for s in slide_ids if overwrite or not project.has_result(FEATURES, name, s)]
    report.skipped = [s for s in slide_ids if s not in todo]
    options = {"num_workers": 0, **options, "overwrite": overwrite}
    if options.get("stain") is not None and todo:
        # one target for every worker, fitted here (workers fit only their slide's source)
        from napari_wsi_mil.features.extract import stain_target

        yield Progress("stain", 0, 1, message="fitting the stain target")
        options["stain"] = stain_target(
            project, name, todo, options["stain"], options.pop("stain_reference", COHORT)
        )
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = Client(cluster if cluster is not None else scheduler)
    try:
        with project.lock():
            futures = {
                client.submit(
                    _extract_one,
                    str(project.root),
                    slide_id,
                    encoder,
                    name,
                    options,
                    key=f"extract-{name}-{slide_id}",
                    retries=retries,
                    pure=False,
                ): slide_id
                for slide_id in todo
            }
            yield Progress("extract (dask)", 0, len(todo))
            for done, future in enumerate(as_completed(futures), start=1):
                slide_id = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # a worker's error, after its retries
                    report.failed[slide_id] = f"{type(exc).__name__}: {exc}"
                else:
                    report.extracted[slide_id] = result["patches"]
                    if result["warnings"]:
                        report.warnings[slide_id] = result["warnings"]
                yield Progress("extract (dask)", done, len(todo), message=slide_id)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return report
