"""A small client for the OCI distribution API: does a tag exist, and what is its digest.

Only what the stages need: ``HEAD /v2/<repository>/manifests/<tag>`` with the OCI and Docker v2
manifest media types accepted, answering the ``Docker-Content-Digest`` header (computed from a ``GET``
when a registry leaves the header out). Authentication: none, HTTP basic, or the bearer-token dance that
Docker Hub, GHCR, Harbor, Quay and distribution's token auth use (a ``401`` with
``WWW-Authenticate: Bearer realm=...`` is answered by fetching a pull token from the realm with the
basic credentials). Connection errors, timeouts, ``429`` and ``5xx`` are retried with back-off; what
still fails becomes an :class:`ExternalError` naming the registry URL.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from branchops.errors import ConfigError, ExternalError

if TYPE_CHECKING:
    from branchops.config import RegistrySection

log = logging.getLogger(__name__)

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
ATTEMPTS = 4
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, 429, 5xx)."""


@dataclass(frozen=True)
class RegistryLocation:
    host: str  # host[:port]
    namespace: str  # "" or "team/project"
    scheme: str  # https, or http for an insecure registry

    @classmethod
    def from_config(cls, cfg: RegistrySection) -> RegistryLocation:
        if not cfg.url:
            raise ConfigError("registry.url is not set: there is no registry to push to or look images up in")
        host, _, namespace = cfg.url.partition("/")
        return cls(host=host, namespace=namespace.strip("/"), scheme="http" if cfg.insecure else "https")

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def repository(self, image: str) -> str:
        """The repository path inside the registry (``<namespace>/<image>``)."""
        return f"{self.namespace}/{image}" if self.namespace else image

    def reference(self, image: str) -> str:
        """The full image name without tag or digest (``host:port/namespace/image``)."""
        return f"{self.host}/{self.repository(image)}"


def _parse_challenge(header: str) -> dict[str, str]:
    return {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', header)}


class RegistryClient:
    def __init__(self, cfg: RegistrySection, session: requests.Session | None = None):
        self.location = RegistryLocation.from_config(cfg)
        self._username = cfg.username
        self._password = cfg.password.resolve() if cfg.password else None
        if cfg.password and self._password is None:
            raise ConfigError(
                f"registry.password: {cfg.password.describe()}; set it or remove registry.password"
            )
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = "branchops"
        self._tokens: dict[str, str] = {}  # scope -> bearer token
        self._timeout = (CONNECT_TIMEOUT_S, min(READ_TIMEOUT_S, cfg.timeout_s))

    # -- public -------------------------------------------------------------------------------
    def manifest_digest(self, image: str, tag: str) -> str | None:
        """``sha256:...`` of ``image:tag`` in the registry, or None if the tag does not exist."""
        repository = self.location.repository(image)
        url = f"{self.location.base_url}/v2/{repository}/manifests/{tag}"
        response = self._request("HEAD", url, repository)
        if response.status_code == 404:
            return None
        self._raise_for_status(response, f"{repository}:{tag}")
        digest = response.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        # The header is a SHOULD in the spec; the digest of the manifest bytes is the definition.
        response = self._request("GET", url, repository)
        if response.status_code == 404:
            return None
        self._raise_for_status(response, f"{repository}:{tag}")
        return "sha256:" + hashlib.sha256(response.content).hexdigest()

    def check(self) -> None:
        """Raise ExternalError unless the registry answers the API's base endpoint."""
        response = self._request("GET", f"{self.location.base_url}/v2/", None)
        self._raise_for_status(response, "/v2/")

    # -- internals ----------------------------------------------------------------------------
    def _request(self, method: str, url: str, repository: str | None) -> requests.Response:
        try:
            return self._request_with_retries(method, url, repository)
        except _Transient as exc:
            raise ExternalError(
                f"registry {self.location.base_url} is unreachable or failing ({ATTEMPTS} attempts): {exc}"
            ) from None

    @retry(
        retry=retry_if_exception_type(_Transient),
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential(multiplier=0.25, max=4),
        reraise=True,
    )
    def _request_with_retries(self, method: str, url: str, repository: str | None) -> requests.Response:
        response = self._send(method, url, repository)
        if response.status_code == 401 and "WWW-Authenticate" in response.headers:
            challenge = response.headers["WWW-Authenticate"]
            if challenge.lower().startswith("bearer"):
                self._fetch_token(_parse_challenge(challenge), repository)
                response = self._send(method, url, repository)
        if response.status_code == 429 or response.status_code >= 500:
            raise _Transient(f"{method} {url} answered HTTP {response.status_code}")
        return response

    def _send(self, method: str, url: str, repository: str | None) -> requests.Response:
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        auth = None
        token = self._tokens.get(self._scope(repository))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif self._username is not None and self._password is not None:
            auth = (self._username, self._password)
        try:
            return self._session.request(
                method, url, headers=headers, auth=auth, timeout=self._timeout, allow_redirects=True
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(f"{method} {url}: {type(exc).__name__}: {_short(exc)}") from None

    @staticmethod
    def _scope(repository: str | None) -> str:
        return f"repository:{repository}:pull" if repository else ""

    def _fetch_token(self, challenge: dict[str, str], repository: str | None) -> None:
        realm = challenge.get("realm")
        if not realm:
            raise ExternalError(f"registry {self.location.base_url} asked for a bearer token without a realm")
        params = {"service": challenge["service"]} if "service" in challenge else {}
        scope = challenge.get("scope") or self._scope(repository)
        if scope:
            params["scope"] = scope
        auth = (self._username, self._password) if self._username and self._password else None
        try:
            response = self._session.get(realm, params=params, auth=auth, timeout=self._timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(f"token endpoint {realm}: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise _Transient(f"token endpoint {realm} answered HTTP {response.status_code}")
        if response.status_code in (401, 403):
            raise ExternalError(
                f"registry {self.location.base_url}: the token endpoint {realm} refused the "
                "credentials (check registry.username and registry.password)"
            )
        if not response.ok:
            raise ExternalError(
                f"registry {self.location.base_url}: token endpoint {realm} answered "
                f"HTTP {response.status_code}"
            )
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise ExternalError(
                f"registry {self.location.base_url}: token endpoint {realm} returned no token"
            )
        self._tokens[self._scope(repository)] = token

    def _raise_for_status(self, response: requests.Response, what: str) -> None:
        if response.ok:
            return
        if response.status_code in (401, 403):
            who = f"user '{self._username}'" if self._username else "anonymous access"
            raise ExternalError(
                f"registry {self.location.base_url} refused {what} for {who} "
                f"(HTTP {response.status_code}); check registry.username and registry.password"
            )
        raise ExternalError(f"registry {self.location.base_url}: {what} answered HTTP {response.status_code}")


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."
