"""A stateful fake of ``kfp.Client`` at the boundary the Kubeflow engine uses: the generated v2beta1 APIs
``client.pipelines``, ``client.pipeline_uploads``, ``client.experiments`` and ``client.runs``.

It is a fake (no Kubeflow Pipelines server can run here), written to the API's documented behaviour and
the server's code (kubeflow/pipelines backend/src/apiserver):

* ids are UUIDs; objects are the real ``kfp_server_api`` model classes;
* list calls take a JSON ``filter`` of predicates (``EQUALS`` on ``display_name``/``name``), ``page_size``
  and ``page_token``; unexpected keyword arguments are refused as the generated client refuses them;
* a pipeline name is unique per namespace and a version name unique per pipeline: duplicates answer
  HTTP 409 (``codes.AlreadyExists``); UploadPipelineVersion with an unknown pipeline id answers 400;
* ``CreatePipeline`` creates a pipeline with no version (``UploadPipeline`` would name the first version
  after the pipeline; see pipeline_upload_server.go);
* a version whose file holds a platform spec is stored as ``{pipeline_spec, platform_spec}``;
* runs go PENDING → RUNNING → SUCCEEDED (or a scripted sequence) as they are polled; terminate makes
  them CANCELING then CANCELED; run states are V2beta1RuntimeState names;
* a run keeps the ``service_account`` it was created with; once it has ended, ``run_details`` lists a
  ``V2beta1PipelineTaskDetail`` per task of the pipeline's root DAG with its state and times, and
  nothing else: as in the real API, the values a step returned and its artifacts' contents live in ML
  Metadata and the object store, never in the run (``run_details.task_details[].outputs`` holds only
  artifact ids). What the steps wrote is simulated by ``on_run_succeeded`` (e.g. files on a volume).

Faults are injected per method with :meth:`FakeKfpClient.fail_next` (an HTTP status or an exception).
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict, deque
from datetime import UTC, datetime
from typing import Any

import yaml
from kfp_server_api import (
    GoogleRpcStatus,
    V2beta1Experiment,
    V2beta1ListExperimentsResponse,
    V2beta1ListPipelinesResponse,
    V2beta1ListPipelineVersionsResponse,
    V2beta1ListRunsResponse,
    V2beta1Pipeline,
    V2beta1PipelineTaskDetail,
    V2beta1PipelineVersion,
    V2beta1Run,
    V2beta1RunDetails,
)
from kfp_server_api.exceptions import ApiException, ApiTypeError

_COMMON = {"async_req", "_return_http_data_only", "_preload_content", "_request_timeout"}


def _api_error(status: int, message: str) -> ApiException:
    exc = ApiException(
        status=status,
        reason={
            400: "Bad Request",
            404: "Not Found",
            409: "Conflict",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }.get(status, "Error"),
    )
    exc.body = json.dumps(
        {
            "error": message,
            "code": {400: 3, 404: 5, 409: 6}.get(status, 13),
            "message": message,
            "details": [],
        }
    )
    return exc


def _now() -> datetime:
    return datetime.now(UTC)


def _matches(obj: Any, filter_json: str | None) -> bool:
    if not filter_json:
        return True
    for predicate in json.loads(filter_json).get("predicates", []):
        op = predicate.get("operation") or predicate.get("op")
        if op not in ("EQUALS", 1):
            raise _api_error(400, f"fake supports only EQUALS predicates, got {op!r}")
        value = predicate.get("string_value", predicate.get("stringValue"))
        if getattr(obj, predicate["key"], None) != value:
            return False
    return True


def _page(items: list[Any], page_size: int | None, page_token: str | None) -> tuple[list[Any], str | None]:
    start = int(page_token or 0)
    size = page_size or 20
    chunk = items[start : start + size]
    nxt = str(start + size) if start + size < len(items) else None
    return chunk, nxt


def _in_dependency_order(tasks: dict[str, Any]) -> list[str]:
    """Task names so that every task comes after the tasks it depends on (ties by name)."""
    ordered: list[str] = []
    while len(ordered) < len(tasks):
        ready = sorted(
            name
            for name, task in tasks.items()
            if name not in ordered and set((task or {}).get("dependentTasks") or []) <= set(ordered)
        )
        if not ready:
            raise ValueError("the pipeline's tasks depend on each other in a cycle")
        ordered.append(ready[0])
    return ordered


class _Api:
    def __init__(self, fake: FakeKfpClient) -> None:
        self._fake = fake

    def _enter(self, method: str, kwargs: dict[str, Any], allowed: set[str]) -> None:
        unexpected = set(kwargs) - allowed - _COMMON
        if unexpected:
            raise ApiTypeError(f"Got an unexpected keyword argument '{min(unexpected)}' to method {method}")
        self._fake.calls.append((method, dict(kwargs)))
        self._fake._maybe_fail(method)


class _Pipelines(_Api):
    def pipeline_service_list_pipelines(self, **kw: Any) -> V2beta1ListPipelinesResponse:
        self._enter("list_pipelines", kw, {"namespace", "page_token", "page_size", "sort_by", "filter"})
        ns = kw.get("namespace") or ""
        items = [
            p
            for p in self._fake.pipelines.values()
            if (p.namespace or "") == ns and _matches(p, kw.get("filter"))
        ]
        page, nxt = _page(items, kw.get("page_size"), kw.get("page_token"))
        return V2beta1ListPipelinesResponse(
            pipelines=page or None, total_size=len(items), next_page_token=nxt
        )

    def pipeline_service_create_pipeline(self, pipeline: V2beta1Pipeline, **kw: Any) -> V2beta1Pipeline:
        self._enter("create_pipeline", kw, set())
        name = pipeline.name or pipeline.display_name
        if not name:
            raise _api_error(400, "Invalid input error: pipeline name is empty")
        ns = pipeline.namespace or ""
        if any((p.namespace or "") == ns and p.name == name for p in self._fake.pipelines.values()):
            raise _api_error(409, f"Already exist error: pipeline {name} in namespace {ns!r}")
        created = V2beta1Pipeline(
            pipeline_id=str(uuid.uuid4()),
            name=name,
            display_name=pipeline.display_name or name,
            description=pipeline.description,
            namespace=pipeline.namespace,
            created_at=_now(),
        )
        self._fake.pipelines[created.pipeline_id] = created
        return created

    def pipeline_service_list_pipeline_versions(
        self, pipeline_id: str, **kw: Any
    ) -> V2beta1ListPipelineVersionsResponse:
        self._enter("list_pipeline_versions", kw, {"page_token", "page_size", "sort_by", "filter"})
        if pipeline_id not in self._fake.pipelines:
            raise _api_error(404, f"Pipeline {pipeline_id} not found")
        items = [
            v
            for v in self._fake.versions.values()
            if v.pipeline_id == pipeline_id and _matches(v, kw.get("filter"))
        ]
        page, nxt = _page(items, kw.get("page_size"), kw.get("page_token"))
        return V2beta1ListPipelineVersionsResponse(
            pipeline_versions=page or None, total_size=len(items), next_page_token=nxt
        )

    def pipeline_service_get_pipeline_version(
        self, pipeline_id: str, pipeline_version_id: str, **kw: Any
    ) -> V2beta1PipelineVersion:
        self._enter("get_pipeline_version", kw, set())
        version = self._fake.versions.get(pipeline_version_id)
        if version is None or version.pipeline_id != pipeline_id:
            raise _api_error(404, f"Pipeline version {pipeline_version_id} not found")
        return version


class _PipelineUploads(_Api):
    def upload_pipeline_version(self, uploadfile: str, **kw: Any) -> V2beta1PipelineVersion:
        self._enter(
            "upload_pipeline_version", kw, {"name", "display_name", "pipelineid", "description", "tags"}
        )
        with open(uploadfile, "rb") as f:  # the generated client sends the file at this path
            content = f.read()
        try:
            documents = [d for d in yaml.safe_load_all(content) if d is not None]
        except yaml.YAMLError:
            raise _api_error(
                400, "Failed to create a pipeline version. Error reading pipeline spec file"
            ) from None
        if not documents or "root" not in documents[0]:
            raise _api_error(400, "Failed to create a pipeline version. Invalid pipeline spec")
        pipeline_id = kw.get("pipelineid")
        if not pipeline_id or pipeline_id not in self._fake.pipelines:
            raise _api_error(400, "Failed to create a pipeline version")
        name = kw.get("name") or kw.get("display_name") or uploadfile.rsplit("/", 1)[-1].split(".")[0]
        if any(v.pipeline_id == pipeline_id and v.name == name for v in self._fake.versions.values()):
            raise _api_error(409, "Failed to create a pipeline version")
        spec: Any = (
            documents[0]
            if len(documents) == 1
            else {"pipeline_spec": documents[0], "platform_spec": documents[1]}
        )
        version = V2beta1PipelineVersion(
            pipeline_id=pipeline_id,
            pipeline_version_id=str(uuid.uuid4()),
            name=name,
            display_name=kw.get("display_name") or name,
            description=kw.get("description"),
            created_at=_now(),
            pipeline_spec=spec,
        )
        self._fake.versions[version.pipeline_version_id] = version
        self._fake.uploaded_specs.append(content)
        return version


class _Experiments(_Api):
    def experiment_service_list_experiments(self, **kw: Any) -> V2beta1ListExperimentsResponse:
        self._enter("list_experiments", kw, {"page_token", "page_size", "sort_by", "filter", "namespace"})
        ns = kw.get("namespace") or ""
        items = [
            e
            for e in self._fake.experiments.values()
            if (e.namespace or "") == ns and _matches(e, kw.get("filter"))
        ]
        page, nxt = _page(items, kw.get("page_size"), kw.get("page_token"))
        return V2beta1ListExperimentsResponse(
            experiments=page or None, total_size=len(items), next_page_token=nxt
        )

    def experiment_service_create_experiment(
        self, experiment: V2beta1Experiment, **kw: Any
    ) -> V2beta1Experiment:
        self._enter("create_experiment", kw, set())
        if self._fake.multi_user and not experiment.namespace:
            raise _api_error(
                400, "Invalid input error: In multi-user mode, experiment namespace must be specified"
            )
        ns = experiment.namespace or ""
        if any(
            (e.namespace or "") == ns and e.display_name == experiment.display_name
            for e in self._fake.experiments.values()
        ):
            raise _api_error(409, f"Already exist error: experiment {experiment.display_name}")
        created = V2beta1Experiment(
            experiment_id=str(uuid.uuid4()),
            display_name=experiment.display_name,
            description=experiment.description,
            namespace=experiment.namespace,
            created_at=_now(),
            storage_state="AVAILABLE",
        )
        self._fake.experiments[created.experiment_id] = created
        return created


class _Runs(_Api):
    def run_service_list_runs(self, **kw: Any) -> V2beta1ListRunsResponse:
        self._enter(
            "list_runs", kw, {"namespace", "experiment_id", "page_token", "page_size", "sort_by", "filter"}
        )
        items = [
            r
            for r in self._fake.runs.values()
            if (not kw.get("experiment_id") or r.experiment_id == kw["experiment_id"])
            and _matches(r, kw.get("filter"))
        ]
        page, nxt = _page(items, kw.get("page_size"), kw.get("page_token"))
        return V2beta1ListRunsResponse(runs=page or None, total_size=len(items), next_page_token=nxt)

    def run_service_create_run(self, run: V2beta1Run, **kw: Any) -> V2beta1Run:
        self._enter("create_run", kw, {"experiment_id"})
        ref = run.pipeline_version_reference
        version = self._fake.versions.get(getattr(ref, "pipeline_version_id", None) or "")
        if version is None or version.pipeline_id != ref.pipeline_id:
            raise _api_error(400, "Invalid input error: pipeline version reference not found")
        if run.experiment_id not in self._fake.experiments:
            raise _api_error(404, f"Experiment {run.experiment_id} not found")
        created = V2beta1Run(
            run_id=str(uuid.uuid4()),
            display_name=run.display_name,
            experiment_id=run.experiment_id,
            pipeline_version_reference=ref,
            runtime_config=run.runtime_config,
            service_account=run.service_account,
            created_at=_now(),
            state="PENDING",
            storage_state="AVAILABLE",
        )
        self._fake.runs[created.run_id] = created
        self._fake.run_scripts[created.run_id] = deque(self._fake.next_run_script)
        return created

    def run_service_get_run(self, run_id: str, **kw: Any) -> V2beta1Run:
        self._enter("get_run", kw, {"experiment_id"})
        run = self._fake.runs.get(run_id)
        if run is None:
            raise _api_error(404, f"Run {run_id} not found")
        script = self._fake.run_scripts[run_id]
        if script:
            state = script.popleft()
            if isinstance(state, tuple):
                state, message = state
                run.error = GoogleRpcStatus(code=2, message=message)
            run.state = state
            if state in ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"):
                run.finished_at = _now()
                run.run_details = self._details(run)
                if state == "SUCCEEDED" and self._fake.on_run_succeeded is not None:
                    self._fake.on_run_succeeded(run)
        return run

    def _details(self, run: V2beta1Run) -> V2beta1RunDetails:
        """The tasks of the run's pipeline and their final states; no parameter or metric values.

        A succeeded run lists every task SUCCEEDED. A failed run lists the tasks that ran, in dependency
        order: those before ``failing_task`` SUCCEEDED, that one FAILED with ``failing_task_error`` as its
        error; the tasks after it never started and are not listed (the default failing task is the last).
        """
        version = self._fake.versions[run.pipeline_version_reference.pipeline_version_id]
        spec = version.pipeline_spec
        spec = spec.get("pipeline_spec", spec)
        tasks = _in_dependency_order((spec.get("root", {}).get("dag", {}) or {}).get("tasks", {}) or {})
        states = {task: run.state for task in tasks}
        if run.state != "SUCCEEDED" and tasks:
            failing = self._fake.failing_task if self._fake.failing_task in tasks else tasks[-1]
            tasks = tasks[: tasks.index(failing) + 1]
            states = {task: "SUCCEEDED" for task in tasks} | {failing: "FAILED"}
        return V2beta1RunDetails(
            pipeline_context_id=str(uuid.uuid4().int % 10**6),
            pipeline_run_context_id=str(uuid.uuid4().int % 10**6),
            task_details=[
                V2beta1PipelineTaskDetail(
                    run_id=run.run_id,
                    task_id=str(uuid.uuid4()),
                    display_name=task,
                    create_time=run.created_at,
                    start_time=run.created_at,
                    end_time=run.finished_at,
                    state=states[task],
                    error=GoogleRpcStatus(code=2, message=self._fake.failing_task_error)
                    if states[task] == "FAILED" and self._fake.failing_task_error
                    else None,
                    execution_id=str(uuid.uuid4().int % 10**6),
                    pod_name=f"{run.display_name[:40]}-{task}-{uuid.uuid4().hex[:5]}",
                )
                for task in tasks
            ],
        )

    def run_service_terminate_run(self, run_id: str, **kw: Any) -> Any:
        self._enter("terminate_run", kw, {"experiment_id"})
        if run_id not in self._fake.runs:
            raise _api_error(404, f"Run {run_id} not found")
        self._fake.runs[run_id].state = "CANCELING"
        self._fake.run_scripts[run_id] = deque(["CANCELED"])
        return {}


class FakeKfpClient:
    def __init__(self, multi_user: bool = False) -> None:
        self.multi_user = multi_user
        self.pipelines: dict[str, V2beta1Pipeline] = {}
        self.versions: dict[str, V2beta1PipelineVersion] = {}
        self.experiments: dict[str, V2beta1Experiment] = {}
        self.runs: dict[str, V2beta1Run] = {}
        self.run_scripts: dict[str, deque] = {}
        self.next_run_script: list[Any] = ["RUNNING", "RUNNING", "SUCCEEDED"]
        self.on_run_succeeded: Any = None  # called with the run when it succeeds: what its steps wrote
        self.failing_task: str | None = None  # the task a failed run failed at (default: its last)
        self.failing_task_error: str | None = None
        self.uploaded_specs: list[bytes] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._faults: dict[str, deque] = defaultdict(deque)
        # The generated APIs, under the names kfp.Client gives them.
        self.pipelines_api = _Pipelines(self)
        self.pipeline_uploads = _PipelineUploads(self)
        self.experiments_api = _Experiments(self)
        self.runs_api = _Runs(self)

    def fail_next(self, method: str, *faults: Any) -> None:
        """The next calls of ``method`` fail: an int is an HTTP status, an exception is raised, a callable
        is called (to change state first, as a server that did the work but whose answer was lost)."""
        self._faults[method].extend(faults)

    def _maybe_fail(self, method: str) -> None:
        if self._faults[method]:
            fault = self._faults[method].popleft()
            if isinstance(fault, int):
                raise _api_error(fault, f"injected HTTP {fault}")
            if isinstance(fault, BaseException):
                raise fault
            fault()

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)


class FakeKfpClientView:
    """What the engine sees: attribute names exactly as on ``kfp.Client``."""

    def __init__(self, fake: FakeKfpClient) -> None:
        self.pipelines = fake.pipelines_api
        self.pipeline_uploads = fake.pipeline_uploads
        self.experiments = fake.experiments_api
        self.runs = fake.runs_api
