"""Kubeflow Pipelines engine, on ``kfp.Client`` and the v2beta1 API it wraps.

Authentication, as clusters are actually set up:

* ``in-cluster``: the CI agent runs as a pod. kfp's audience-bound projected token
  (``/var/run/secrets/kubeflow/pipelines/token``, or ``$KF_PIPELINES_SA_TOKEN_PATH``) when mounted,
  else the pod's service-account token; re-read before every request, since the kubelet rotates it.
* ``bearer``: a token from the environment (``kubeflow.kubeflow.token``), sent as
  ``Authorization: Bearer``; e.g. an OIDC token accepted by Istio in front of Kubeflow.
* ``cookie``: a session cookie from the environment for clusters behind Dex/oauth2-proxy
  (``authservice_session=...`` or ``oauth2_proxy_kubeflow=...``; a bare value is taken as
  ``authservice_session``).
* ``none``: a port-forward or an unauthenticated test cluster.

Every call goes through the generated v2beta1 API that ``kfp.Client`` exposes (``client.pipelines``,
``client.pipeline_uploads``, ``client.experiments``, ``client.runs``) with a per-request timeout, and is
retried with exponential back-off on 5xx, 429 and network errors; what still fails becomes an
:class:`~branchops.errors.ExternalError` that says what was being done, where, and why.

Upsert: a pipeline is created empty (``CreatePipeline``) and then its first version is uploaded with the
spec-hash name. ``UploadPipeline`` would name the first version after the pipeline, and
``CreatePipelineAndVersion`` needs the spec at a URL the server can fetch. Version names are unique per
pipeline (the server answers 409): a concurrent or retried upload that finds its name taken looks the
version up instead. Runs are found by display name in the experiment before one is created.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from branchops import interrupt
from branchops.engine.base import (
    CompiledPipeline,
    PipelineEngine,
    ProgressCallback,
    RunResult,
    Upload,
    check_name,
    validate_params,
)
from branchops.errors import ConfigError, ExternalError
from branchops.progress import elapsed

if TYPE_CHECKING:
    from branchops.config import KubeflowRemote

log = logging.getLogger(__name__)
T = TypeVar("T")

# Where an in-cluster token may be, in order of preference (kfp's own default first).
KFP_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
IN_CLUSTER_TOKEN_PATHS = (
    "/var/run/secrets/kubeflow/pipelines/token",
    "/var/run/secrets/kubernetes.io/serviceaccount/token",
)
DEFAULT_SESSION_COOKIE = "authservice_session"

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_FINAL_OK = {"SUCCEEDED"}
_FINAL_BAD = {"FAILED", "CANCELED", "SKIPPED"}


def in_cluster_token_path(candidates: tuple[str, ...] | None = None) -> str:
    env_path = os.environ.get(KFP_TOKEN_ENV)
    paths = ((env_path,) if env_path else ()) + (candidates or IN_CLUSTER_TOKEN_PATHS)
    for path in paths:
        if Path(path).is_file():
            return path
    raise ConfigError(
        "kubeflow.kubeflow.auth is 'in-cluster' but no service-account token was found at "
        f"{', '.join(paths)} (is this running in a pod? Otherwise use auth 'bearer' or 'cookie')"
    )


def client_kwargs(settings: KubeflowRemote, token_paths: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The ``kfp.Client`` arguments for the configured authentication. Secrets are read here, at use."""
    kwargs: dict[str, Any] = {"host": settings.host}
    if settings.namespace:
        kwargs["namespace"] = settings.namespace
    if settings.auth in ("bearer", "cookie"):
        assert settings.token is not None  # the config schema requires it for these modes
        value = settings.token.resolve()
        if not value:
            raise ConfigError(
                f"kubeflow.kubeflow.token: {settings.token.describe()}; auth '{settings.auth}' "
                "needs it (export the variable, or bind the CI credential)"
            )
        if settings.auth == "bearer":
            kwargs["existing_token"] = value
        else:
            kwargs["cookies"] = value if "=" in value else f"{DEFAULT_SESSION_COOKIE}={value}"
    elif settings.auth == "in-cluster":
        from kfp.client import ServiceAccountTokenVolumeCredentials

        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=in_cluster_token_path(token_paths))
    return kwargs


def make_client(settings: KubeflowRemote, token_paths: tuple[str, ...] | None = None) -> Any:
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        return kfp.Client(**client_kwargs(settings, token_paths))


def _equals(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "string_value": value}]})


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _is_api_exception(exc: BaseException) -> bool:
    return type(exc).__name__ == "ApiException" or exc.__class__.__module__.startswith("kfp_server_api")


def _transient(exc: BaseException) -> bool:
    if _is_api_exception(exc):
        return _status(exc) in _TRANSIENT_STATUS
    try:
        import urllib3

        network = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
    except ImportError:  # pragma: no cover - urllib3 ships with kfp
        network = (ConnectionError, TimeoutError)
    return isinstance(exc, network)


def _server_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
            message = data.get("message") or data.get("error")
            if message:
                return str(message)
        except (ValueError, AttributeError):
            return str(body)[:300]
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else f"{type(exc).__name__}: {exc}"


class KubeflowEngine(PipelineEngine):
    name = "kubeflow"

    def __init__(
        self,
        settings: KubeflowRemote,
        client_factory: Callable[[KubeflowRemote], Any] | None = None,
        poll_interval_s: float | None = None,
        backoff_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._factory = client_factory or make_client
        self._client: Any = None
        self.poll_interval_s = settings.poll_interval_s if poll_interval_s is None else poll_interval_s
        self.backoff_s = backoff_s
        self._clock = clock
        self._sleep = sleep

    def run_url(self, run_id: str) -> str:
        """The run's page in the Kubeflow Pipelines UI."""
        return f"{(self.settings.ui_url or self.settings.host).rstrip('/')}/#/runs/details/{run_id}"

    # -- plumbing ----------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._call("connecting", lambda: self._factory(self.settings))
        return self._client

    def _call(self, what: str, fn: Callable[[], T], ok_status: tuple[int, ...] = ()) -> T:
        """``fn()`` with retries on transient failures; anything else, or the last failure, becomes an
        ExternalError. Statuses in ``ok_status`` are re-raised as they are for the caller to handle."""
        from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        attempts = self.settings.retries + 1
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            reraise=False,
            wait=wait_exponential(multiplier=self.backoff_s, max=30),
            retry=retry_if_exception(_transient),
            before_sleep=lambda state: log.warning(
                "Kubeflow Pipelines: %s failed (attempt %d of %d): %s; retrying",
                what,
                state.attempt_number,
                attempts,
                _server_message(state.outcome.exception()),
            ),
        )
        try:
            return retrying(fn)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise ExternalError(
                f"Kubeflow Pipelines at {self.settings.host}: {what} failed after {attempts} "
                f"attempts: {_server_message(last)}"
            ) from last
        except (ConfigError, ExternalError):
            raise
        except Exception as exc:
            if _is_api_exception(exc) and _status(exc) in ok_status:
                raise
            raise self._external(what, exc) from exc

    def _external(self, what: str, exc: BaseException) -> ExternalError:
        """A failure as the user needs to read it: what we were doing, where, and what came back."""
        status = _status(exc) if _is_api_exception(exc) else None
        if status in (401, 403):
            hint = (
                f"check kubeflow.kubeflow.auth ('{self.settings.auth}') and its token, and that it may "
                f"use namespace {self.settings.namespace or '(shared)'}"
            )
            return ExternalError(
                f"Kubeflow Pipelines at {self.settings.host} refused {what}: HTTP {status} "
                f"{_server_message(exc)}; {hint}"
            )
        if status is not None:
            return ExternalError(
                f"Kubeflow Pipelines at {self.settings.host}: {what} failed: HTTP {status} "
                f"{_server_message(exc)}"
            )
        return ExternalError(
            f"Kubeflow Pipelines at {self.settings.host}: {what} failed: {type(exc).__name__}: {exc}"
        )

    @property
    def _timeout(self) -> float:
        return self.settings.timeout_s

    # -- pipelines and versions --------------------------------------------------------------------
    def _find_pipeline(self, pipeline_name: str) -> Any | None:
        kwargs: dict[str, Any] = {
            "filter": _equals("display_name", pipeline_name),
            "page_size": 2,
            "_request_timeout": self._timeout,
        }
        if self.settings.namespace:
            kwargs["namespace"] = self.settings.namespace
        response = self._call(
            f"looking up pipeline {pipeline_name}",
            lambda: self.client.pipelines.pipeline_service_list_pipelines(**kwargs),
        )
        pipelines = response.pipelines or []
        if len(pipelines) > 1:
            raise ExternalError(
                f"Kubeflow Pipelines has {len(pipelines)} pipelines named {pipeline_name}; "
                "rename or delete the extra ones"
            )
        return pipelines[0] if pipelines else None

    def _find_version_of(self, pipeline_id: str, version_name: str) -> Any | None:
        response = self._call(
            f"looking up version {version_name}",
            lambda: self.client.pipelines.pipeline_service_list_pipeline_versions(
                pipeline_id, filter=_equals("name", version_name), page_size=2, _request_timeout=self._timeout
            ),
        )
        versions = [v for v in (response.pipeline_versions or []) if v.name == version_name]
        return versions[0] if versions else None

    def find_version(self, pipeline_name: str, version_name: str) -> Upload | None:
        check_name("pipeline", pipeline_name)
        pipeline = self._find_pipeline(pipeline_name)
        if pipeline is None:
            return None
        version = self._find_version_of(pipeline.pipeline_id, version_name)
        if version is None:
            return None
        return Upload(pipeline.pipeline_id, version.pipeline_version_id, version.name, created=False)

    def _create_pipeline(self, pipeline_name: str, description: str) -> Any:
        from kfp_server_api import V2beta1Pipeline

        body = V2beta1Pipeline(
            name=pipeline_name,
            display_name=pipeline_name,
            description=description or None,
            namespace=self.settings.namespace,
        )
        try:
            return self._call(
                f"creating pipeline {pipeline_name}",
                lambda: self.client.pipelines.pipeline_service_create_pipeline(
                    body, _request_timeout=self._timeout
                ),
                ok_status=(409,),
            )
        except Exception as exc:
            if _status(exc) != 409:
                raise
            found = self._find_pipeline(pipeline_name)  # created meanwhile by a concurrent upsert
            if found is None:
                raise ExternalError(
                    f"Kubeflow Pipelines: pipeline {pipeline_name} exists (409) but cannot be "
                    "listed; check the namespace and permissions"
                ) from exc
            return found

    def upsert(self, pipeline_name: str, compiled: CompiledPipeline, description: str = "") -> Upload:
        check_name("pipeline", pipeline_name)
        version_name = compiled.version_name
        pipeline = self._find_pipeline(pipeline_name)
        if pipeline is not None:
            version = self._find_version_of(pipeline.pipeline_id, version_name)
            if version is not None:
                log.info("pipeline %s version %s already uploaded", pipeline_name, version_name)
                return Upload(pipeline.pipeline_id, version.pipeline_version_id, version_name, created=False)
        else:
            pipeline = self._create_pipeline(pipeline_name, description)

        with tempfile.TemporaryDirectory(prefix="branchops-upload-") as tmp:
            package = Path(tmp) / f"{pipeline_name}-{version_name[:12]}.yaml"
            package.write_bytes(compiled.spec)
            try:
                version = self._call(
                    f"uploading version {version_name} of pipeline {pipeline_name}",
                    lambda: self.client.pipeline_uploads.upload_pipeline_version(
                        str(package),
                        name=version_name,
                        display_name=version_name,
                        pipelineid=pipeline.pipeline_id,
                        description=description or None,
                        _request_timeout=self._timeout,
                    ),
                    ok_status=(409,),
                )
            except Exception as exc:
                if _status(exc) != 409:
                    raise
                # The name is taken: a concurrent upsert, or our own earlier attempt whose answer was lost.
                version = self._find_version_of(pipeline.pipeline_id, version_name)
                if version is None:
                    raise ExternalError(
                        f"Kubeflow Pipelines: version {version_name} of {pipeline_name} exists "
                        "(409) but cannot be found"
                    ) from exc
                return Upload(pipeline.pipeline_id, version.pipeline_version_id, version_name, created=False)
        log.info("uploaded pipeline %s version %s", pipeline_name, version_name)
        return Upload(pipeline.pipeline_id, version.pipeline_version_id, version_name, created=True)

    # -- experiments and runs ----------------------------------------------------------------------
    def _experiment_id(self, experiment: str) -> str:
        from kfp_server_api import V2beta1Experiment

        kwargs: dict[str, Any] = {
            "filter": _equals("display_name", experiment),
            "page_size": 2,
            "_request_timeout": self._timeout,
        }
        if self.settings.namespace:
            kwargs["namespace"] = self.settings.namespace

        def find() -> str | None:
            response = self._call(
                f"looking up experiment {experiment}",
                lambda: self.client.experiments.experiment_service_list_experiments(**kwargs),
            )
            found = response.experiments or []
            return found[0].experiment_id if found else None

        existing = find()
        if existing:
            return existing
        body = V2beta1Experiment(
            display_name=experiment,
            namespace=self.settings.namespace,
            description="runs started by branchops",
        )
        try:
            created = self._call(
                f"creating experiment {experiment}",
                lambda: self.client.experiments.experiment_service_create_experiment(
                    body, _request_timeout=self._timeout
                ),
                ok_status=(409,),
            )
            return created.experiment_id
        except Exception as exc:
            if _status(exc) != 409:
                raise
            again = find()
            if again is None:
                raise
            return again

    def _find_run(self, experiment_id: str, run_name: str) -> Any | None:
        kwargs: dict[str, Any] = {
            "experiment_id": experiment_id,
            "filter": _equals("display_name", run_name),
            "page_size": 2,
            "_request_timeout": self._timeout,
        }
        response = self._call(
            f"looking up run {run_name}", lambda: self.client.runs.run_service_list_runs(**kwargs)
        )
        runs = [r for r in (response.runs or []) if r.display_name == run_name]
        return runs[0] if runs else None

    def _version_spec(self, upload: Upload) -> Any:
        version = self._call(
            f"reading version {upload.version_name}",
            lambda: self.client.pipelines.pipeline_service_get_pipeline_version(
                upload.pipeline_id, upload.version_id, _request_timeout=self._timeout
            ),
        )
        return version.pipeline_spec

    def _create_run(self, experiment_id: str, upload: Upload, run_name: str, params: dict[str, Any]) -> Any:
        from kfp_server_api import V2beta1PipelineVersionReference, V2beta1Run, V2beta1RuntimeConfig

        body = V2beta1Run(
            display_name=run_name,
            experiment_id=experiment_id,
            pipeline_version_reference=V2beta1PipelineVersionReference(
                pipeline_id=upload.pipeline_id, pipeline_version_id=upload.version_id
            ),
            runtime_config=V2beta1RuntimeConfig(parameters=params),
            service_account=self.settings.service_account,
        )
        attempts = self.settings.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                # One attempt per call: a create that timed out may still have created the run, so before
                # trying again we look for it by name rather than let a retry start a second run.
                return self.client.runs.run_service_create_run(body, _request_timeout=self._timeout)
            except Exception as exc:
                if not _transient(exc):
                    raise self._external(f"starting run {run_name}", exc) from exc
                if attempt == attempts:
                    raise ExternalError(
                        f"Kubeflow Pipelines at {self.settings.host}: starting run {run_name} "
                        f"failed after {attempts} attempts: {_server_message(exc)}"
                    ) from exc
                log.warning(
                    "Kubeflow Pipelines: starting run %s failed (attempt %d of %d): %s",
                    run_name,
                    attempt,
                    attempts,
                    _server_message(exc),
                )
                time.sleep(min(30.0, self.backoff_s * 2 ** (attempt - 1)))
                existing = self._find_run(experiment_id, run_name)
                if existing is not None:
                    return existing
        raise AssertionError("unreachable")  # pragma: no cover

    def run(
        self,
        experiment: str,
        upload: Upload,
        run_name: str,
        params: dict[str, Any],
        timeout_s: float,
        on_progress: ProgressCallback | None = None,
    ) -> RunResult:
        check_name("run", run_name)
        progress = on_progress or (lambda message: log.info("%s", message))
        t0 = self._clock()
        experiment_id = self._experiment_id(experiment)
        run = self._find_run(experiment_id, run_name)
        reused = run is not None
        if reused:
            progress(f"run {run_name}: exists already ({run.state}); not started again")
        else:
            spec = self._version_spec(upload)
            if spec:
                validate_params(spec, params)
            else:  # servers before KFP 2.0 GA do not return the spec; the server validates on its own
                log.warning(
                    "Kubeflow Pipelines returned no spec for version %s; parameters not checked here",
                    upload.version_name,
                )
            run = self._create_run(experiment_id, upload, run_name, params)
            progress(
                f"run {run_name}: started on Kubeflow as {self.settings.service_account} "
                f"(run id {run.run_id}): {self.run_url(run.run_id)}"
            )

        run_id, last_state, last_beat = run.run_id, None, self._clock()
        while True:
            state = str(run.state or "PENDING")
            if state != last_state:
                if last_state is not None or reused:
                    progress(f"run {run_name}: {state}")
                last_state = state
            if state in _FINAL_OK or state in _FINAL_BAD:
                break
            now = self._clock()
            if now - last_beat >= self.settings.heartbeat_s:
                progress(f"run {run_name}: {state}, {elapsed(now - t0)} elapsed; {self.run_url(run_id)}")
                last_beat = now
            if now - t0 > timeout_s:
                self._terminate(run_id, run_name)
                return RunResult(
                    run_id=run_id,
                    state="TIMEOUT",
                    reused=reused,
                    duration_s=self._elapsed(t0),
                    error=f"run {run_name} did not finish within {timeout_s:g} s; it was terminated",
                )
            if interrupt.requested.is_set():
                # nobody will wait for this run's result: stop it on the cluster too, then report the stop
                self._terminate(run_id, run_name)
                interrupt.check()
            self._sleep(self.poll_interval_s)
            run = self._call(
                f"polling run {run_name}",
                lambda: self.client.runs.run_service_get_run(run_id, _request_timeout=self._timeout),
            )

        error = None
        if state not in _FINAL_OK:
            detail = getattr(getattr(run, "error", None), "message", None)
            error = f"run {run_name} ended {state}" + _failed_steps(run) + (f": {detail}" if detail else "")
        return RunResult(
            run_id=run_id,
            state="SUCCEEDED" if state in _FINAL_OK else "FAILED",
            error=error,
            reused=reused,
            outputs={"tasks": _task_states(run)},
            started_at=_iso(getattr(run, "created_at", None)),
            finished_at=_iso(getattr(run, "finished_at", None)),
            duration_s=self._elapsed(t0),
        )

    def _terminate(self, run_id: str, run_name: str) -> None:
        try:
            self._call(
                f"terminating run {run_name}",
                lambda: self.client.runs.run_service_terminate_run(run_id, _request_timeout=self._timeout),
            )
        except ExternalError as exc:  # the timeout is what the caller must hear about; this is a footnote
            log.warning("%s", exc)

    def _elapsed(self, t0: float) -> float:
        return round(self._clock() - t0, 3)


def _task_states(run: Any) -> dict[str, str]:
    """Each step's final state (the parameters a step returned live in ML Metadata, not in the run)."""
    details = getattr(run, "run_details", None)
    tasks = getattr(details, "task_details", None) or []
    return {t.display_name: str(t.state) for t in tasks if getattr(t, "display_name", None)}


def _failed_steps(run: Any) -> str:
    """Which steps failed, with their errors: a download refused in the first step reads differently
    from a training step that ran out of memory, and the run's own error names neither."""
    details = getattr(run, "run_details", None)
    failed = [
        t for t in getattr(details, "task_details", None) or [] if str(getattr(t, "state", "")) == "FAILED"
    ]
    if not failed:
        return ""
    described = []
    for task in failed:
        message = getattr(getattr(task, "error", None), "message", None)
        described.append(f"{task.display_name}" + (f" ({message})" if message else ""))
    return " at step " + ", ".join(described)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
