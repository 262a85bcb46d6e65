"""The Kubernetes API client layer shared by the backends that talk to a cluster.

:func:`load_api_client` configures a client in-cluster or from ``KUBECONFIG``; :class:`KubeApi` makes
the few calls the serving rollout needs (create-or-patch, read, delete, Job status and log, ready pods,
the API server's service/pod proxy). ``kubernetes`` is imported only when a client is made.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from branchops.errors import ExternalError

if TYPE_CHECKING:
    from branchops.serving.client import ServingClient


def load_api_client() -> Any:
    """A kubernetes ApiClient: in-cluster when running in a pod, else from KUBECONFIG (or ~/.kube/config)."""
    from kubernetes import client, config

    kubeconfig = os.environ.get("KUBECONFIG")
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        # Read KUBECONFIG now: the client library reads it once, at import time.
        return config.new_client_from_config(config_file=kubeconfig or os.path.expanduser("~/.kube/config"))
    except (config.ConfigException, OSError) as exc:
        raise ExternalError(
            "cannot configure the Kubernetes client: not in a cluster and no usable kubeconfig "
            f"(KUBECONFIG={kubeconfig or 'unset'}): {exc}"
        ) from None


_KINDS = {  # kind -> (api attribute, method suffix)
    "ConfigMap": ("core", "config_map"),
    "Service": ("core", "service"),
    "PersistentVolumeClaim": ("core", "persistent_volume_claim"),
    "Deployment": ("apps", "deployment"),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontal_pod_autoscaler"),
    "PodDisruptionBudget": ("policy", "pod_disruption_budget"),
    "Job": ("batch", "job"),
}
_ISTIO_PLURALS = {"DestinationRule": "destinationrules", "VirtualService": "virtualservices"}


class KubeApi:
    """The few kubernetes-client calls the rollout makes (create-or-patch, read, delete, proxy).

    Every failure is an :class:`ExternalError` naming the call and the server's message (or saying the
    API server is unreachable), so a rollout can roll back rather than crash."""

    request_timeout_s = 30.0  # a hung API server must not hang the rollout
    job_gone_timeout_s = 120.0  # a copy pod's grace period is 30 s
    poll_s = 0.5

    def __init__(self, api_client: Any = None) -> None:
        from kubernetes import client

        if api_client is None:
            # In-cluster or KUBECONFIG read now (the library reads KUBECONFIG once, at import), into a
            # client of our own rather than the library's process-wide default configuration.
            api_client = load_api_client()
        self.api_client = api_client
        self._session: Any = None  # proxy_client's, made on first use
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def _error(self, what: str, exc: Exception) -> ExternalError:
        """``what`` failed: the HTTP status and the message of the server's Status, or unreachable."""
        from kubernetes.client.exceptions import ApiException

        if isinstance(exc, ApiException):
            try:
                message = json.loads(exc.body or "{}").get("message") or exc.reason
            except (TypeError, ValueError, AttributeError):
                message = str(exc.body)[:300]
            return ExternalError(f"{what}: HTTP {exc.status} {exc.reason}: {str(message)[:500]}")
        host = getattr(self.api_client.configuration, "host", "?")
        return ExternalError(f"Kubernetes API at {host} unreachable ({what.lower()}): {exc}")

    def _autoscaled(self, deployment: str, namespace: str) -> bool:
        """Whether a HorizontalPodAutoscaler owns this Deployment's replicas."""
        hpas = self.autoscaling.list_namespaced_horizontal_pod_autoscaler(
            namespace, _request_timeout=self.request_timeout_s
        ).items
        return any(
            h.spec.scale_target_ref.kind == "Deployment" and h.spec.scale_target_ref.name == deployment
            for h in hpas
        )

    def apply(self, obj: dict[str, Any]) -> None:
        """Create, or patch when it exists (an autoscaled Deployment's replicas stay the autoscaler's)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        from branchops.k8s.validate import validate_object

        validate_object(obj, allow_unchecked=obj["kind"] in _ISTIO_PLURALS)
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        timeout = self.request_timeout_s
        # The API server refuses an unknown or duplicate field instead of dropping it with a Warning
        # header the kubernetes client never shows (fieldValidation, GA since Kubernetes 1.27).
        strict = {"field_validation": "Strict"}
        try:
            if obj["kind"] in _ISTIO_PLURALS:
                group, version = obj["apiVersion"].split("/")
                plural = _ISTIO_PLURALS[obj["kind"]]
                try:
                    self.custom.create_namespaced_custom_object(
                        group, version, namespace, plural, obj, **strict, _request_timeout=timeout
                    )
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    self.custom.patch_namespaced_custom_object(
                        group, version, namespace, plural, name, obj, **strict, _request_timeout=timeout
                    )
                return
            api, suffix = _KINDS[obj["kind"]]
            target = getattr(self, api)
            try:
                getattr(target, f"create_namespaced_{suffix}")(
                    namespace, obj, **strict, _request_timeout=timeout
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
                body = obj
                # Only the autoscaler's target keeps its replicas: a canary's are stepped by the rollout.
                if (
                    obj["kind"] == "Deployment"
                    and "replicas" in obj["spec"]
                    and self._autoscaled(name, namespace)
                ):
                    body = {**obj, "spec": {k: v for k, v in obj["spec"].items() if k != "replicas"}}
                getattr(target, f"patch_namespaced_{suffix}")(
                    name, namespace, body, **strict, _request_timeout=timeout
                )
        except (ApiException, HTTPError) as exc:
            raise self._error(f"Kubernetes refused {obj['kind']} {namespace}/{name}", exc) from None

    def _by_name(self, verb: str, kind: str, name: str, namespace: str, **options: Any) -> Any:
        """``verb`` ("read" or "delete") one named object: Istio kinds through the custom objects API (which
        calls reading "get"; ``options`` are for the typed APIs only), the rest through their typed API."""
        if kind in _ISTIO_PLURALS:
            call = getattr(self.custom, f"{'get' if verb == 'read' else verb}_namespaced_custom_object")
            return call(
                "networking.istio.io",
                "v1beta1",
                namespace,
                _ISTIO_PLURALS[kind],
                name,
                _request_timeout=self.request_timeout_s,
            )
        api, suffix = _KINDS[kind]
        call = getattr(getattr(self, api), f"{verb}_namespaced_{suffix}")
        return call(name, namespace, _request_timeout=self.request_timeout_s, **options)

    def delete(self, kind: str, name: str, namespace: str, wait_s: float | None = None) -> None:
        """Delete, quietly if it is gone already. A Job is deleted in the foreground (it stays until its
        pods are gone) and waited for (``wait_s``, by default :attr:`job_gone_timeout_s`): a Job
        re-created under the same name while the old one terminates is refused (409), and its old pod
        would still be copying beside the new one."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        if wait_s is None:
            wait_s = self.job_gone_timeout_s if kind == "Job" else 0.0
        propagation = "Foreground" if kind == "Job" else "Background"
        try:
            self._by_name("delete", kind, name, namespace, propagation_policy=propagation)
        except (ApiException, HTTPError) as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return
            raise self._error(f"could not delete {kind} {namespace}/{name}", exc) from None
        if wait_s > 0:
            self.wait_gone(kind, name, namespace, wait_s)

    def exists(self, kind: str, name: str, namespace: str) -> bool:
        """Whether the object is still there (terminating counts: its name is not free yet)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self._by_name("read", kind, name, namespace)
        except (ApiException, HTTPError) as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return False
            raise self._error(f"could not read {kind} {namespace}/{name}", exc) from None
        return True

    def wait_gone(self, kind: str, name: str, namespace: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.exists(kind, name, namespace):
            if time.monotonic() >= deadline:
                raise ExternalError(
                    f"{kind} {namespace}/{name} was deleted but is still there after {timeout_s:.0f}s "
                    "(a finalizer or a pod that does not terminate?)"
                )
            time.sleep(self.poll_s)

    def config_state(self, name: str, namespace: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        from branchops.serving.kubernetes_manifests import STATE_ANNOTATION

        try:
            cm = self.core.read_namespaced_config_map(
                name, namespace, _request_timeout=self.request_timeout_s
            )
        except (ApiException, HTTPError) as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return None
            raise self._error(f"could not read ConfigMap {namespace}/{name}", exc) from None
        raw = (cm.metadata.annotations or {}).get(STATE_ANNOTATION)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ExternalError(
                f"ConfigMap {namespace}/{name}: annotation {STATE_ANNOTATION} is not valid JSON "
                "(edited by hand?); put back a state or delete the annotation"
            ) from None

    def snapshot_restore_size(self, name: str, namespace: str) -> str | None:
        """A VolumeSnapshot's ``status.restoreSize`` (the least a PVC restored from it may request), or
        None while the snapshot does not report it yet; a missing snapshot is an ExternalError."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            snapshot = self.custom.get_namespaced_custom_object(
                "snapshot.storage.k8s.io",
                "v1",
                namespace,
                "volumesnapshots",
                name,
                _request_timeout=self.request_timeout_s,
            )
        except (ApiException, HTTPError) as exc:
            raise self._error(f"could not read VolumeSnapshot {namespace}/{name}", exc) from None
        size = (snapshot.get("status") or {}).get("restoreSize")
        return str(size) if size is not None else None

    def job_finished(self, name: str, namespace: str) -> bool | None:
        """True once succeeded, False once failed, None while running."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            status = self.batch.read_namespaced_job_status(
                name, namespace, _request_timeout=self.request_timeout_s
            ).status
        except (ApiException, HTTPError) as exc:
            raise self._error(f"could not read Job {namespace}/{name}", exc) from None
        if status.succeeded:
            return True
        for condition in status.conditions or []:
            if condition.type == "Failed" and condition.status == "True":
                return False
        return None

    def job_log(self, job: str, namespace: str) -> str:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            pods = self.core.list_namespaced_pod(
                namespace, label_selector=f"job-name={job}", _request_timeout=self.request_timeout_s
            ).items
            succeeded = [p for p in pods if p.status.phase == "Succeeded"] or pods
            if not succeeded:
                return ""
            return self.core.read_namespaced_pod_log(
                succeeded[0].metadata.name,
                namespace,
                container="copy",
                _request_timeout=self.request_timeout_s,
            )
        except (ApiException, HTTPError) as exc:
            raise self._error(
                f"could not list pods of Job {namespace}/{job} or read their log", exc
            ) from None

    def ready_pods(self, namespace: str, selector: dict[str, str]) -> list[str]:
        """Pods that are Running and Ready (a Running pod whose TF Serving still loads is not)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        try:
            pods = self.core.list_namespaced_pod(
                namespace, label_selector=label_selector, _request_timeout=self.request_timeout_s
            ).items
        except (ApiException, HTTPError) as exc:
            raise self._error(f"could not list pods in {namespace}", exc) from None
        return [
            p.metadata.name
            for p in pods
            if p.status.phase == "Running"
            and p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    def proxy_client(self, namespace: str, target: str, model: str, timeout_s: float = 10.0) -> ServingClient:
        """A REST client reaching TF Serving through the API server's proxy (``services/NAME:http`` or
        ``pods/NAME:8501``), with the cluster credentials the kubernetes client loaded."""
        from branchops.serving.client import ServingClient

        conf = self.api_client.configuration
        base = f"{conf.host.rstrip('/')}/api/v1/namespaces/{namespace}/{target}/proxy"
        return ServingClient(base, model, timeout_s=timeout_s, session=self._proxy_session())

    def _proxy_session(self) -> Any:
        """One HTTP session for every proxy client: the rollout polls each pod every few seconds, and a
        session per client would open (and TLS-handshake) a new connection to the API server each time.
        The token is read again for each client (in a cluster, the client library refreshes it)."""
        conf = self.api_client.configuration
        if self._session is None:
            import requests

            session = requests.Session()
            if conf.cert_file and conf.key_file:
                session.cert = (conf.cert_file, conf.key_file)
            session.verify = conf.ssl_ca_cert if conf.verify_ssl and conf.ssl_ca_cert else conf.verify_ssl
            self._session = session
        token = conf.get_api_key_with_prefix("authorization")  # "Bearer ..." from kubeconfig or in-cluster
        if token:
            self._session.headers["Authorization"] = token
        return self._session
