"""Scale-out ingestion: ``dataset_group`` partitions materialized on a Dask cluster (``dagster_dask``).

An asset job runs one partition per run, so ingestion scales out with concurrent runs, one per partition,
whose step each runs on whichever Dask worker is free (a worker runs one step at a time with one thread).

:data:`lancell_dask_executor` is ``dagster_dask``'s ``DaskExecutor`` (same configuration, same worker
function) with two upstream defects fixed, both hit by this graph:

- its Dask task key is ``<job>.<step>``, and Dask treats equal keys as one task, so concurrent runs of one
  job on one cluster share a single task and all but the first receive its events (dagster issue #21418);
  here the key also carries the run id.
- with dask >= 2025.1, ``Client.submit`` walks tuple arguments, and a run whose steps declare a pool (every
  LanceDB-writing asset here) carries a Dagster ``@record`` that refuses iteration, so every submit raised
  ``Iteration is not allowed on @record RunOpConcurrency``; here the step's arguments travel in one opaque
  object.

Concurrent ingestion is safe: each dataset writes its own zarr group; registry and layout writes take the
atlas' cross-process locks; LanceDB appends retry on commit conflicts. The Dask executor does not enforce
op pools, so keep ``optimize``/``snapshot`` runs (pool ``lancedb_writer``) on the default executor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
import dask.distributed
from dagster._core.errors import raise_execution_interrupts
from dagster._utils import iterate_with_context
from dagster_dask import dask_executor
from dagster_dask.executor import DaskExecutor, get_dask_resource_requirements, query_on_dask_worker

from lancell_assets.datasets import dataset_group
from resources import AtlasResource, LandingZone

if TYPE_CHECKING:
    from dagster._core.definitions.reconstruct import ReconstructableJob
    from dagster._core.events import DagsterEvent
    from dagster._core.execution.context.system import PlanOrchestrationContext
    from dagster._core.execution.plan.plan import ExecutionPlan

__all__ = [
    "INGEST_JOB_NAME",
    "dask_ingest_job",
    "dask_run_config",
    "lancell_dask_executor",
    "reconstructable_ingest_job",
]

INGEST_JOB_NAME = "ingest_on_dask_job"


class _StepArguments:
    """The arguments of ``query_on_dask_worker``, in an object Dask's graph parser does not look into."""

    def __init__(self, *args: Any) -> None:
        self.args = args


def _run_step(dependencies: Sequence[object], arguments: _StepArguments) -> Sequence[DagsterEvent]:
    """Run one step on a Dask worker (``dependencies`` only make Dask wait for upstream steps)."""
    return query_on_dask_worker(dependencies, *arguments.args)


class LancellDaskExecutor(DaskExecutor):
    """``dagster_dask``'s executor with run-unique task keys and opaque step arguments (see module doc)."""

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        if not plan_context.instance.is_persistent:
            raise dg.DagsterInvariantViolationError("Dask execution requires a persistent DagsterInstance")
        if self.cluster_type == "existing":
            cluster = self.cluster_configuration["address"]
        elif self.cluster_type == "local":
            cluster = dask.distributed.LocalCluster(**self.build_dict(plan_context.job_name))
        else:
            raise dg.DagsterInvariantViolationError(
                f"lancell_dask_executor runs on 'existing' or 'local' clusters, not {self.cluster_type!r}"
            )
        run = plan_context.dagster_run
        instance_ref = plan_context.instance.get_ref()
        with dask.distributed.Client(cluster) as client:
            futures: dict[str, dask.distributed.Future] = {}
            for level in execution_plan.get_steps_to_execute_by_level():
                for step in level:
                    upstream = [futures[key] for item in step.step_inputs for key in item.dependency_keys]
                    arguments = _StepArguments(
                        plan_context.reconstructable_job,
                        run,
                        plan_context.run_config,
                        [step.key],
                        instance_ref,
                        execution_plan.known_state,
                    )
                    futures[step.key] = client.submit(
                        _run_step,
                        upstream,
                        arguments,
                        key=f"{plan_context.job_name}.{step.key}.{run.run_id}",
                        resources=get_dask_resource_requirements(step.tags),
                    )
            done = dask.distributed.as_completed(list(futures.values()), with_results=True)
            for _, events in iterate_with_context(raise_execution_interrupts, done):
                yield from events


@dg.executor(
    name="lancell_dask",
    config_schema=dask_executor.config_schema,
    requirements=dg.multiple_process_executor_requirements(),
)
def lancell_dask_executor(init_context: dg.InitExecutorContext) -> LancellDaskExecutor:
    """Run each step on a Dask cluster (config as ``dagster_dask.dask_executor``: ``existing``/``local``)."""
    ((cluster_type, cluster_configuration),) = init_context.executor_config["cluster"].items()
    return LancellDaskExecutor(cluster_type, cluster_configuration)


def dask_ingest_job(db_uri: str, store_url: str, landing: str) -> dg.JobDefinition:
    """The job that materializes one ``dataset_group`` partition per run on a Dask cluster.

    Parameters
    ----------
    db_uri, store_url
        The atlas (:class:`resources.AtlasResource`), which must exist (``lancell init`` or
        ``RaggedAtlas.create``: the job creates none); object-store credentials come from the workers'
        environment (``AWS_*``), never from the job's arguments.
    landing
        The landing-zone folder (:class:`resources.LandingZone`), readable by every worker.
    """
    job = dg.define_asset_job(INGEST_JOB_NAME, selection=[dataset_group], executor_def=lancell_dask_executor)
    defs = dg.Definitions(
        assets=[dataset_group],
        jobs=[job],
        resources={
            "atlas": AtlasResource(db_uri=db_uri, store_url=store_url),
            "landing_zone": LandingZone(path=landing),
        },
    )
    return defs.resolve_job_def(INGEST_JOB_NAME)


def reconstructable_ingest_job(db_uri: str, store_url: str, landing: str) -> ReconstructableJob:
    """A pointer to :func:`dask_ingest_job` that Dask workers rebuild (pass it to ``dg.execute_job``)."""
    return dg.build_reconstructable_job(
        __name__, "dask_ingest_job", reconstructable_args=(db_uri, store_url, landing)
    )


def dask_run_config(scheduler_address: str) -> dict[str, Any]:
    """Run config that sends every step to the existing Dask scheduler at ``scheduler_address``."""
    return {"execution": {"config": {"cluster": {"existing": {"address": scheduler_address}}}}}
