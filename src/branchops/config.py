"""The branchops configuration: schema, loading with line-accurate errors, and JSON Schema export.

One file, ``config/branchops.yaml``, reviewed like code. Unknown keys are errors, types are strict
(``"False"`` is not a boolean), and secrets appear only as references (``{env: NAME}`` or
``{credential: ID}``); an inline token is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from branchops import STAGES, Stage  # re-exported: the schema's stages are the one list
from branchops.errors import ConfigError
from branchops.secrets import credential_env_name, read_env

CONFIG_PATH = Path("config") / "branchops.yaml"


# Bounds that turn a typo into a clear error: no wait is longer than a week, and a configuration file is
# small and shallow (a megabyte of YAML, or 500 nested brackets, is a mistake or an attack, not a config).
MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_CONFIG_BYTES = 1 << 20
MAX_NESTING = 32

BRANCH_NAME_PATTERN = r"^(?!/)(?!.*//)(?!.*\.\.)[A-Za-z0-9._/-]+(?<!/)(?<!\.lock)$"


class Strict(BaseModel):
    """Every section forbids unknown keys and coerces nothing."""

    # allow_inf_nan=False: a threshold of .nan would silently disable a check, .inf would make it unreachable
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, regex_engine="python-re", allow_inf_nan=False
    )


class SecretRef(Strict):
    """Where a secret comes from: an environment variable or a CI credential id. Never the value."""

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    credential: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$")

    @model_validator(mode="after")
    def _exactly_one(self) -> "SecretRef":
        if (self.env is None) == (self.credential is None):
            raise ValueError("a secret reference names exactly one of 'env' or 'credential'")
        return self

    @property
    def env_name(self) -> str:
        return self.env if self.env else credential_env_name(self.credential or "")

    def resolve(self) -> str | None:
        """The secret's value from the environment (a CI binds credentials to variables), or None."""
        return read_env(self.env_name)

    def describe(self) -> str:
        where = f"env {self.env}" if self.env else f"credential {self.credential} (env {self.env_name})"
        return f"{where}: {'set' if read_env(self.env_name) else 'not set'}"


def _refuse_inline_secret(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(
            "inline secrets are refused; reference it instead: {env: VARIABLE} or "
            "{credential: CI_CREDENTIAL_ID}"
        )
    return value


def _refuse_credentials_in_url(value: Any) -> Any:
    """A URL with user:password@ (or a token as the user name, which GitHub accepts) is an inline secret."""
    if isinstance(value, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]+@", value):
        raise ValueError(
            "credentials in a URL are refused (they would be shown and committed); give the URL "
            "without them and the secret as {env: VARIABLE} or {credential: CI_CREDENTIAL_ID}"
        )
    return value


SecretField = Annotated[SecretRef, Field(description="{env: NAME} or {credential: ID}; never the value")]


class ProjectSection(Strict):
    name: str = Field(default="ml-project", pattern=r"^[a-z0-9][a-z0-9-]*$")
    # What the model does, in the project's words: the training report and the release merge request
    # quote it to the approver.
    description: str = ""


class BranchesSection(Strict):
    mode: Literal["per-stage", "single-branch"] = "per-stage"
    main: str = Field(default="main", pattern=BRANCH_NAME_PATTERN)
    single_branch: str = Field(default="main", pattern=BRANCH_NAME_PATTERN)
    stages: dict[Stage, Annotated[str, Field(pattern=BRANCH_NAME_PATTERN)]] = Field(
        default_factory=lambda: {stage: stage for stage in STAGES}
    )

    @field_validator("stages")
    @classmethod
    def _all_stages_distinct(cls, stages: dict[str, str]) -> dict[str, str]:
        missing = [s for s in STAGES if s not in stages]
        if missing:
            raise ValueError(f"every stage needs a branch; missing: {', '.join(missing)}")
        seen: dict[str, str] = {}
        for stage, branch in stages.items():
            if branch in seen:
                raise ValueError(
                    f"stages '{seen[branch]}' and '{stage}' both map to branch '{branch}'; "
                    "use mode: single-branch to run every stage on one branch"
                )
            seen[branch] = stage
        return stages


class BotSection(Strict):
    name: str = "branchops-bot"
    email: str = Field(default="branchops-bot@users.noreply.local", pattern=r"^[^@\s]+@[^@\s]+$")
    # The trailer that marks a commit as branchops' own; such commits never start a stage.
    marker: str = Field(default="Branchops-Bot", pattern=r"^[A-Za-z][A-Za-z0-9-]*$")


class GitSection(Strict):
    remote: str | None = Field(
        default=None, description="push records to this remote (None: local refs only)"
    )

    _no_credentials = field_validator("remote", mode="before")(_refuse_credentials_in_url)
    push_retries: int = Field(default=8, ge=1, le=50)


class GitHubSettings(Strict):
    repository: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    token: SecretField
    base_url: str = Field(default="https://api.github.com", pattern=r"^https?://")
    _base_url_plain = field_validator("base_url", mode="before")(_refuse_credentials_in_url)
    timeout_s: float = Field(default=30, gt=0, le=MAX_TIMEOUT_S)
    retries: int = Field(default=5, ge=0, le=20)
    # A rate-limited call waits for GitHub's reset (Retry-After / X-RateLimit-Reset) up to this long,
    # then fails instead of hanging a CI job for up to an hour.
    rate_limit_max_wait_s: float = Field(default=900, ge=0)
    status_context: str = "branchops"

    _inline = field_validator("token", mode="before")(_refuse_inline_secret)


class ForgeSection(Strict):
    backend: Literal["local", "github"] = "local"
    github: GitHubSettings | None = None

    @model_validator(mode="after")
    def _settings_for_backend(self) -> "ForgeSection":
        if self.backend == "github" and self.github is None:
            raise ValueError("backend 'github' needs a 'github' section (repository, token)")
        return self


class JenkinsSettings(Strict):
    url: str = Field(pattern=r"^https?://")
    _url_plain = field_validator("url", mode="before")(_refuse_credentials_in_url)
    user: str
    token: SecretField
    folder: str | None = None
    job: str = "branchops"
    timeout_s: float = Field(default=30, gt=0, le=MAX_TIMEOUT_S)
    scan_interval: str = Field(default="1h", pattern=r"^[0-9]+[mhd]$")
    # Jenkins credentials-store ids that the Jenkinsfile binds; the values never leave Jenkins.
    credentials: dict[str, str] = Field(
        default_factory=lambda: {
            "github": "github-token",
            "kaggle": "kaggle-api",
            "registry": "registry-push",
            "kubeconfig": "kubeconfig",
            "kubeflow": "kubeflow-token",
        }
    )
    # The shared secret GitHub signs webhook deliveries with (`branchops bootstrap` sets it on the
    # webhook; Jenkins holds the same value as credential github-webhook-secret). None: unsigned.
    webhook_secret: SecretRef | None = None

    _inline = field_validator("token", mode="before")(_refuse_inline_secret)
    _inline_webhook_secret = field_validator("webhook_secret", mode="before")(_refuse_inline_secret)


class CISection(Strict):
    backend: Literal["local", "jenkins"] = "local"
    jenkins: JenkinsSettings | None = None

    @model_validator(mode="after")
    def _settings_for_backend(self) -> "CISection":
        if self.backend == "jenkins" and self.jenkins is None:
            raise ValueError("backend 'jenkins' needs a 'jenkins' section (url, user, token)")
        return self


class RegistrySection(Strict):
    # host[:port][/namespace]; None means no registry: build-components tests and records the tags it
    # would build and says plainly that no image was built.
    url: str | None = Field(default=None, pattern=r"^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$")
    insecure: bool = False
    builder: Literal["auto", "none", "buildah", "podman", "docker", "kaniko"] = "auto"
    max_parallel_builds: int = Field(default=2, ge=1, le=32)
    username: str | None = None
    password: SecretRef | None = None
    timeout_s: float = Field(default=1800, gt=0, le=MAX_TIMEOUT_S)
    # --build-arg values for every component image (e.g. BASE_IMAGE pinned by digest); part of each
    # component's content hash, so changing one rebuilds every image.
    build_args: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = Field(
        default_factory=dict
    )

    _inline = field_validator("password", mode="before")(_refuse_inline_secret)


class KubeflowLocal(Strict):
    root: str = ".branchops/kfp"


class KubeflowRemote(Strict):
    host: str = Field(pattern=r"^https?://")
    _host_plain = field_validator("host", mode="before")(_refuse_credentials_in_url)
    namespace: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    auth: Literal["none", "in-cluster", "bearer", "cookie"] = "in-cluster"
    token: SecretRef | None = None
    timeout_s: float = Field(default=60, gt=0, le=MAX_TIMEOUT_S)
    retries: int = Field(default=5, ge=0, le=20)
    # The Kubernetes service account every run's pods run as (jenkins/rbac/pipeline.yaml creates it).
    service_account: str = Field(
        default="branchops-pipeline",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    # How often a run is polled while it is waited on, and how often a line says it is still running
    # (its elapsed time and its page in the Kubeflow UI).
    poll_interval_s: float = Field(default=10, gt=0, le=600)
    heartbeat_s: float = Field(default=30, gt=0, le=3600)
    # Where the Kubeflow Pipelines UI is, when not at ``host`` (e.g. https://kubeflow.example.com/_/pipeline
    # behind the central dashboard): run links are <ui_url>/#/runs/details/<run id>.
    ui_url: str | None = Field(default=None, pattern=r"^https?://")
    _ui_plain = field_validator("ui_url", mode="before")(_refuse_credentials_in_url)

    _inline = field_validator("token", mode="before")(_refuse_inline_secret)

    @model_validator(mode="after")
    def _token_for_auth(self) -> "KubeflowRemote":
        if self.auth in ("bearer", "cookie") and self.token is None:
            raise ValueError(f"auth '{self.auth}' needs 'token' ({{env: NAME}} or {{credential: ID}})")
        return self


class KubeflowSection(Strict):
    backend: Literal["local", "kubeflow"] = "local"
    pipeline_name: str = Field(default="training-pipeline", pattern=r"^[a-z0-9][a-z0-9-]*$")
    pipeline_module: str = "pipelines/pipeline.py"
    local: KubeflowLocal = KubeflowLocal()
    kubeflow: KubeflowRemote | None = None

    @model_validator(mode="after")
    def _settings_for_backend(self) -> "KubeflowSection":
        if self.backend == "kubeflow" and self.kubeflow is None:
            raise ValueError("backend 'kubeflow' needs a 'kubeflow' section (host, auth)")
        return self


K8sName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]


class StorageLocal(Strict):
    root: str = ".branchops/volumes"


class StorageTrident(Strict):
    namespace: K8sName = "kubeflow-user"
    storage_class: str = "ontap-flexvol"
    snapshot_class: str = "csi-snapclass"
    size: str = Field(default="20Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"] = (
        "ReadWriteMany"
    )
    ready_timeout_s: float = Field(default=600, gt=0, le=MAX_TIMEOUT_S)
    # The image of the short-lived pod that reads a run's files (metrics.json) off a volume: any image
    # with sh, test, base64 and ls; point it at your own registry when the cluster cannot pull Docker Hub.
    reader_image: str = "busybox:1.36"


class DataVolumePolicy(Strict):
    policy: Literal["new", "existing", "clone"] = "new"
    name: K8sName = "training-data"
    snapshot: str | None = None

    @model_validator(mode="after")
    def _snapshot_for_clone(self) -> "DataVolumePolicy":
        if self.policy == "clone" and not self.snapshot:
            raise ValueError("policy 'clone' needs 'snapshot' (the snapshot to clone the volume from)")
        return self


class StorageSection(Strict):
    backend: Literal["local", "trident"] = "local"
    snapshots: bool = True
    local: StorageLocal = StorageLocal()
    trident: StorageTrident = StorageTrident()
    data_volume: DataVolumePolicy = DataVolumePolicy()
    model_volume: K8sName = "models"


class KaggleSource(Strict):
    dataset: str = Field(pattern=r"^[^/\s]+/[^/\s]+$", description="owner/dataset on Kaggle")
    # Where a local download step finds the credentials (resolved by branchops, passed as environment).
    username: SecretRef | None = None
    key: SecretRef | None = None
    # On Kubeflow: the Kubernetes Secret, in the pipeline's namespace, bound to the download step as
    # environment variables (Secret data key -> variable); the pipeline receives it as ``secrets["kaggle"]``.
    secret: K8sName | None = None
    secret_keys: dict[str, Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=lambda: {"username": "KAGGLE_USERNAME", "key": "KAGGLE_KEY"}, min_length=1
    )

    _inline = field_validator("username", "key", mode="before")(_refuse_inline_secret)


class DataSection(Strict):
    """Where the raw files of a new data volume come from; the project's pipeline reads them from
    its ``source_dir`` input."""

    source: Literal["folder", "kaggle", "script"]
    # folder: copy the files matching ``files`` from this directory (relative to the repository, or absolute)
    folder: str | None = None
    files: str = "*"
    # kaggle: the pipeline downloads this dataset itself (it gets the name as its ``kaggle_dataset`` input)
    kaggle: KaggleSource | None = None
    # script: run ``python <script> <raw folder>`` from the checkout, e.g. to generate synthetic data. A
    # script that writes a file named SYNTHETIC marks the data as synthetic in every report.
    script: str | None = None
    # the data window: the last day (YYYY-MM-DD) a run may use, passed to pipelines that declare the
    # ``data_until`` input; null: all the data there is. A retraining merge request opened by
    # ``branchops monitor`` moves it forward (the data refresh it proposes).
    until: Annotated[date, Field(strict=False)] | None = None

    @model_validator(mode="after")
    def _settings_for_source(self) -> "DataSection":
        needed = {"folder": self.folder, "kaggle": self.kaggle, "script": self.script}[self.source]
        if not needed:
            raise ValueError(
                f"source '{self.source}' needs '{self.source}' ("
                + {
                    "folder": "a directory holding the raw files",
                    "kaggle": "{dataset: owner/name, username: {env: ...}, key: {env: ...}}",
                    "script": "a Python file in the repository that writes the raw files",
                }[self.source]
                + ")"
            )
        return self


# What the toolkit passes to every run; a pipeline declares the ones it uses, and an experiment's params
# may not set them (see branchops.runplan).
TOOLKIT_INPUTS = (
    "source_dir",
    "data_dir",
    "work_dir",
    "export_base",
    "version",
    "commit",
    "kaggle_dataset",
    "data_pvc",
    "model_pvc",
    "data_until",
)
ParamValue = Union[str, int, float, bool, list, dict]


class Experiment(Strict):
    name: K8sName
    # The project's pipeline parameters for this run; checked against the compiled pipeline's inputs
    # before any run starts.
    params: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], ParamValue] = Field(
        default_factory=dict
    )

    @field_validator("params")
    @classmethod
    def _no_toolkit_inputs(cls, params: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(params) & set(TOOLKIT_INPUTS))
        if taken:
            raise ValueError(f"{', '.join(taken)}: set by branchops for every run, not by an experiment")
        return params


# What kfp's set_accelerator_limit accepts (0: no GPU requested at all).
GPU_COUNTS = (0, 1, 2, 4, 8, 16)


class GpuSection(Strict):
    count: int = Field(default=0, ge=0, le=16)
    resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, str]] = Field(default_factory=list)

    @field_validator("count")
    @classmethod
    def _count_kfp_accepts(cls, count: int) -> int:
        # Refused here rather than when kf-pipeline compiles, which would be the first time anyone sees it.
        if count not in GPU_COUNTS:
            accepted = ", ".join(map(str, GPU_COUNTS[1:]))
            raise ValueError(f"{count} GPUs: Kubeflow Pipelines accepts {accepted} (or 0 for none)")
        return count


class KpiSection(Strict):
    # metric name -> minimum value the best experiment must reach (none by default: a fixed bar below the
    # baselines lets a constant model through; the significance rule below is the default gate)
    thresholds: dict[str, float] = Field(default_factory=dict)
    # The run's metrics.json must report "comparisons" ([{baseline, metric, difference, low, high,
    # confidence}], docs/architecture.md §8) and "log_loss"/"log_loss_constant": the model passes only if
    # every comparison's lower bound is above zero at `confidence` or more, and its log loss is below the
    # constant predictor's.
    require_significant: bool = True
    confidence: float = Field(default=0.95, ge=0.5, lt=1)
    # when a model is in production, the candidate must beat it on select_by by at least this much (by the
    # lower bound of the candidate's interval when its metrics.json reports one under "intervals")
    beat_production_by: float | None = Field(default=0.0, ge=0)


class TrainingSection(Strict):
    experiments: list[Experiment] = Field(default_factory=lambda: [Experiment(name="baseline")], min_length=1)
    # The metrics the report tabulates and reproduce compares (all of them must be in each run's
    # metrics.json); select_by and the KPI thresholds name metrics of the same file.
    metrics: list[str] = Field(default_factory=lambda: ["accuracy", "roc_auc"], min_length=1)
    max_parallel_runs: int = Field(default=1, ge=1, le=64)
    timeout_s: float = Field(default=3600, gt=0, le=MAX_TIMEOUT_S)
    select_by: str = "roc_auc"
    kpis: KpiSection = KpiSection()
    gpu: GpuSection = GpuSection()

    @field_validator("experiments")
    @classmethod
    def _unique_names(cls, experiments: list[Experiment]) -> list[Experiment]:
        names = [e.name for e in experiments]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"experiment names must be unique; repeated: {', '.join(dupes)}")
        return experiments


class ServingLocal(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8501, ge=1, le=65535)
    base_path: str = ".branchops/serving"


class ServingKubernetes(Strict):
    namespace: K8sName = "serving"
    deployment: K8sName = "tfserve"
    replicas: int = Field(default=2, ge=1)
    istio: bool = False
    rollout_timeout_s: float = Field(default=600, gt=0, le=MAX_TIMEOUT_S)
    # A pinned TF Serving image (never 'latest'); a registry mirror or a digest reference works too.
    image: str = Field(
        default="docker.io/tensorflow/serving:2.18.0",
        pattern=r"^[^\s:]+(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?$",
    )
    # An image older than the TensorFlow that exported the model is a warning in the release's checks;
    # true refuses the release instead (serving/compat.py says why it is not the default).
    refuse_older_image: bool = False
    max_replicas: int = Field(default=6, ge=1)
    serving_volume_size: str = Field(default="10Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$")
    # The logging proxy beside TF Serving in every serving pod (docs/monitoring.md): branchops[serve]
    # built from docker/log-proxy/Dockerfile and pushed where the cluster pulls from; pinned like image.
    proxy_image: str = Field(
        default="branchops-log-proxy:0.1.0",
        pattern=r"^[^\s:]+(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?$",
    )


class RolloutSection(Strict):
    strategy: Literal["rolling", "canary"] = "rolling"
    canary_steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(default_factory=lambda: [10, 50, 100])
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p99_latency_ms: float = Field(default=500, gt=0)
    requests_per_step: int = Field(default=50, ge=1)
    # Each canary step lasts at least this long (and at least requests_per_step requests).
    min_step_seconds: float = Field(default=60, ge=0, le=MAX_TIMEOUT_S)


class ServingSection(Strict):
    backend: Literal["local", "kubernetes"] = "local"
    model_name: str = Field(default="model", pattern=r"^[A-Za-z0-9_-]+$")
    release_file: str = "serving/tfserve/release.yaml"
    local: ServingLocal = ServingLocal()
    kubernetes: ServingKubernetes = ServingKubernetes()
    rollout: RolloutSection = RolloutSection()


class PredictionLogSection(Strict):
    """What the serving side logs of its :predict traffic for ``branchops monitor`` (docs/monitoring.md):
    a sample of requests with their inputs, predictions, model version and time, as JSON Lines files that
    rotate at ``max_file_bytes`` and of which at most ``max_files`` are kept."""

    enabled: bool = True
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    max_file_bytes: int = Field(default=16 * 1024 * 1024, ge=4096)
    max_files: int = Field(default=8, ge=1, le=1000)
    # local backend: a folder (relative to the repository's state directory, .branchops/); kubernetes
    # backend: the PVC the logging proxy beside TF Serving writes to
    folder: str = "prediction-log"
    volume: K8sName = "prediction-log"
    volume_size: str = Field(default="5Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$")


class DriftSection(Strict):
    # Population Stability Index per feature (and of the predictions) against the served version's
    # training reference: 0.1 is commonly read as "some shift", 0.25 as "a major shift"
    psi_threshold: float = Field(default=0.25, gt=0)
    # a two-sample Kolmogorov-Smirnov test per feature (scipy) counts as drift below this p-value
    ks_alpha: float = Field(default=0.01, gt=0, lt=1)
    # fewer logged rows than this since the last check: no verdict (said so), never an alarm
    min_rows: int = Field(default=100, ge=10)
    # drift must be seen on this many consecutive checks before a retrain is proposed
    consecutive_checks: int = Field(default=2, ge=1, le=100)
    # how many features must drift at once for the check to count as drifted
    min_drifted_features: int = Field(default=1, ge=1)


class LiveMetricSection(Strict):
    # where outcomes arrive: files of (request_id, label) rows, CSV or JSON Lines, in this folder (local:
    # relative to the state directory; kubernetes: a folder on the prediction-log volume)
    outcomes_folder: str = "outcomes"
    min_outcomes: int = Field(default=50, ge=10)
    confidence: float = Field(default=0.95, ge=0.5, lt=1)


class RetrainSection(Strict):
    # the bot's branch for the retraining merge request into the training branch (one open at a time)
    branch: str = Field(default="branchops/retrain", pattern=BRANCH_NAME_PATTERN)


# Jenkins' cron syntax, as hudson.scheduler's CrontabParser.g4 and BaseParser read a TimerTrigger's spec:
# per field its bounds (inclusive), and the upper bound H hashes within (days 1-28, so that every month has
# the day; Sunday once, as 0).
_CRON_FIELDS = (
    ("MINUTE", 0, 59, 59),
    ("HOUR", 0, 23, 23),
    ("DOM", 1, 31, 28),
    ("MONTH", 1, 12, 12),
    ("DOW", 0, 7, 6),
)
_CRON_ALIASES = ("yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly")
_CRON_TERM = re.compile(
    r"(?P<from>[0-9]+)-(?P<to>[0-9]+)(?:/(?P<range_step>[0-9]+))?"
    r"|(?P<value>[0-9]+)"
    r"|\*(?:/(?P<star_step>[0-9]+))?"
    r"|H\((?P<hash_from>[0-9]+)-(?P<hash_to>[0-9]+)\)(?:/(?P<hash_range_step>[0-9]+))?"
    r"|H(?:/(?P<hash_step>[0-9]+))?"
)
_JAVA_INT_MAX = 2**31 - 1  # Jenkins reads every number with Integer.parseInt


def _cron_field_problem(text: str, field: int) -> str | None:
    name, low, high, hash_high = _CRON_FIELDS[field]

    def number(digits: str) -> int:
        value = int(digits)
        if value > _JAVA_INT_MAX:
            raise ValueError(f"{name}: {digits} is too large a number")
        return value

    def bounded(value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"{name}: {value} is out of range {low}-{high}")

    def positive(step: int) -> None:
        if step <= 0:
            raise ValueError(f"{name}: the step must be positive, got {step}")

    try:
        for term in text.split(","):
            match = _CRON_TERM.fullmatch(term)
            if match is None:
                return (
                    f"{name}: '{term}' is not a term Jenkins knows (N, N-M, N-M/S, *, */S, H, H/S, "
                    "H(N-M), H(N-M)/S; no names, no '?', 'L' or spaces)"
                )
            parts = {key: number(value) for key, value in match.groupdict().items() if value is not None}
            if "value" in parts:
                bounded(parts["value"])
            elif "from" in parts:
                bounded(parts["from"])
                bounded(parts["to"])
                positive(parts.get("range_step", 1))
                if parts["from"] > parts["to"]:
                    raise ValueError(f"{name}: the range {term} ends before it starts")
            elif "hash_from" in parts or term.startswith("H"):
                start, end = parts.get("hash_from", low), parts.get("hash_to", hash_high)
                bounded(start)
                bounded(end)
                if start > end:
                    raise ValueError(f"{name}: the range of {term} ends before it starts")
                step = parts.get("hash_range_step", parts.get("hash_step", 1))
                if step > end - start + 1:
                    raise ValueError(f"{name}: {term}: the step must be within 1-{end - start + 1}")
                positive(step)
            else:
                positive(parts.get("star_step", 1))
    except ValueError as exc:
        return str(exc)
    return None


def jenkins_cron_problem(spec: str) -> str | None:
    """Why Jenkins would refuse ``spec`` as the schedule of a TimerTrigger (None: it accepts it).

    Jenkins' CronTabList: lines of ``MINUTE HOUR DOM MONTH DOW`` or an alias such as ``@daily``, an
    optional ``TZ=<zone>`` first line, blank lines and ``#`` comments ignored. A spec with no schedule line
    is refused here too: Jenkins would take it and never run the job.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    entries = 0
    for number, raw in enumerate(re.split(r"\r?\n", spec), start=1):
        line = raw.strip()
        where = f"line {number}: " if "\n" in spec.strip() else ""
        if number == 1 and line.startswith("TZ="):
            zone = line[len("TZ=") :]
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                return f"{where}'{zone}' is not a time zone (TZ= takes an IANA name such as Europe/London)"
            continue
        if not line or line.startswith("#"):
            continue
        entries += 1
        if line.startswith("@"):
            if line[1:] not in _CRON_ALIASES:
                return f"{where}'{line}' is not an alias Jenkins knows (@{', @'.join(_CRON_ALIASES)})"
            continue
        fields = re.split(r"[ \t]+", line)
        if len(fields) != len(_CRON_FIELDS):
            return (
                f"{where}'{line}' has {len(fields)} fields; Jenkins expects 5, MINUTE HOUR DOM MONTH DOW "
                f"(e.g. 'H */6 * * *'), or an alias such as @daily"
            )
        for field, text in enumerate(fields):
            problem = _cron_field_problem(text, field)
            if problem:
                return f"{where}'{line}': {problem}"
    if entries == 0:
        return "no schedule line: the monitor job would never run (e.g. 'H */6 * * *')"
    return None


class MonitoringSection(Strict):
    log: PredictionLogSection = PredictionLogSection()
    drift: DriftSection = DriftSection()
    live_metric: LiveMetricSection = LiveMetricSection()
    retrain: RetrainSection = RetrainSection()
    # Jenkins cron spec of the periodic monitor job `branchops jenkins sync` creates (H: Jenkins' hash)
    schedule: str = "H */6 * * *"

    @field_validator("schedule")
    @classmethod
    def _a_schedule_jenkins_accepts(cls, schedule: str) -> str:
        """Refused here, not when Jenkins refuses the job's config.xml at `branchops jenkins sync`."""
        problem = jenkins_cron_problem(schedule)
        if problem:
            raise ValueError(f"not a schedule Jenkins accepts (Jenkins cron syntax): {problem}")
        return schedule


class ConsoleNotifier(Strict):
    kind: Literal["console"]


class LogFileNotifier(Strict):
    kind: Literal["log_file"]
    path: str = ".branchops/notifications.log"


class WebhookNotifier(Strict):
    kind: Literal["webhook"]
    url: SecretField  # a Slack/Teams webhook URL is itself a credential
    format: Literal["slack", "teams"] = "slack"
    timeout_s: float = Field(default=10, gt=0, le=MAX_TIMEOUT_S)
    retries: int = Field(default=3, ge=0, le=10)

    _inline = field_validator("url", mode="before")(_refuse_inline_secret)


class ForgeNotifier(Strict):
    kind: Literal["forge"]
    comment: bool = True
    commit_status: bool = True


NOTIFIER_KINDS = ("console", "log_file", "webhook", "forge")

Notifier = Annotated[
    Union[ConsoleNotifier, LogFileNotifier, WebhookNotifier, ForgeNotifier], Field(discriminator="kind")
]


class BranchopsConfig(Strict):
    version: Literal[1] = 1
    project: ProjectSection = ProjectSection()
    branches: BranchesSection = BranchesSection()
    approvers: dict[Stage, list[Annotated[str, Field(min_length=1)]]]
    bot: BotSection = BotSection()
    git: GitSection = GitSection()
    forge: ForgeSection = ForgeSection()
    ci: CISection = CISection()
    registry: RegistrySection = RegistrySection()
    kubeflow: KubeflowSection = KubeflowSection()
    storage: StorageSection = StorageSection()
    # where a new data volume's raw files come from (docs/architecture.md, data sources); the training
    # stage needs it when it fills a volume
    data: DataSection | None = None
    training: TrainingSection = TrainingSection()
    serving: ServingSection = ServingSection()
    monitoring: MonitoringSection = MonitoringSection()
    notifications: list[Notifier] = Field(
        default_factory=lambda: [ConsoleNotifier(kind="console"), LogFileNotifier(kind="log_file")]
    )

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("approvers")
    @classmethod
    def _every_stage_has_approvers(cls, approvers: dict[str, list[str]]) -> dict[str, list[str]]:
        missing = [s for s in STAGES if not approvers.get(s)]
        if missing:
            raise ValueError(
                f"every stage needs at least one designated approver; none for: {', '.join(missing)}"
            )
        return approvers

    @model_validator(mode="after")
    def _snapshots_in_the_serving_namespace(self) -> "BranchopsConfig":
        """Kubernetes serving reads a release's model from a PVC cloned from its Trident VolumeSnapshot,
        made in the serving namespace; a PVC's ``dataSource`` can only name a VolumeSnapshot in its own
        namespace (cross-namespace sources need the alpha CrossNamespaceVolumeDataSource gate and a
        ReferenceGrant, which Trident's provisioner is not set up for here). Said at load, not mid-rollout."""
        if self.serving.backend != "kubernetes" or self.storage.backend != "trident":
            return self
        storage_ns, serving_ns = self.storage.trident.namespace, self.serving.kubernetes.namespace
        if storage_ns == serving_ns:
            return self
        defaults = (
            " (both are their defaults, which differ: set one of them)"
            if "namespace" not in self.storage.trident.model_fields_set
            and "namespace" not in self.serving.kubernetes.model_fields_set
            else ""
        )
        raise ValueError(
            f"storage.trident.namespace is '{storage_ns}' but serving.kubernetes.namespace is "
            f"'{serving_ns}'{defaults}: with serving.backend 'kubernetes' and storage.backend 'trident' the "
            "serving backend clones a model snapshot into a PVC in its own namespace, and a PVC's "
            "dataSource can only name a VolumeSnapshot in that same namespace. Put both in one namespace "
            f"(e.g. serving.kubernetes.namespace: {storage_ns})."
        )

    @property
    def source(self) -> Path | None:
        return self._source

    # -- branch <-> stage -------------------------------------------------------------------------
    def branch_for(self, stage: str) -> str:
        if self.branches.mode == "single-branch":
            return self.branches.single_branch
        return self.branches.stages[stage]  # type: ignore[index]

    def stages_for_branch(self, branch: str) -> list[str]:
        """The stages a build of ``branch`` runs, in workflow order (empty for a non-stage branch)."""
        if self.branches.mode == "single-branch":
            return list(STAGES) if branch == self.branches.single_branch else []
        return [stage for stage in STAGES if self.branches.stages[stage] == branch]  # type: ignore[index]

    def digest(self) -> str:
        """A stable hash of the effective configuration, recorded in lineage."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# -- loading ---------------------------------------------------------------------------------------


def _node_for(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The YAML node to point at for a pydantic error location: the value for a scalar, the key for a
    section or list (its line is where the reader looks)."""
    node, key_node = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is None:
                return node if key_node is None else key_node
            key_node, node = pair
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            key_node = node
        else:
            break
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and key_node is not None:
        return key_node
    return node


def _describe(error: dict[str, Any]) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown key (not part of the schema; check the spelling)"
    if kind == "missing":
        return "required key is missing"
    if kind == "bool_type":
        return f"expected a boolean (true or false, unquoted), got {error.get('input')!r}"
    if kind in ("int_type", "float_type", "string_type", "list_type", "dict_type", "model_type"):
        expected = {
            "int_type": "an integer",
            "float_type": "a number",
            "string_type": "a string",
            "list_type": "a list",
            "dict_type": "a mapping",
            "model_type": "a mapping",
        }[kind]
        return f"expected {expected}, got {error.get('input')!r}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


def _check_shape(text: str, source: str | Path) -> None:
    """Refuse nesting deeper than MAX_NESTING before composing (PyYAML's composer recurses per level)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_NESTING:
                raise ConfigError(
                    f"{source}:{event.start_mark.line + 1}: nested more than {MAX_NESTING} levels "
                    "deep; a configuration is never that deep"
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _refuse_duplicate_keys(root: yaml.Node | None, source: str | Path) -> None:
    """YAML lets a repeated key silently win; in a reviewed config that hides a change, so it is an error."""
    pending = [root] if root is not None else []
    while pending:
        node = pending.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                if name in seen:
                    raise ConfigError(
                        f"{source}:{key.start_mark.line + 1}: key '{name}' appears twice (lines "
                        f"{seen[name]} and {key.start_mark.line + 1}); keep one"
                    )
                seen[name] = key.start_mark.line + 1
                pending.append(value)
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)


def _line_of(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate_yaml(model: type[ModelT], text: str, source: str | Path, *, what: str, shape: str) -> ModelT:
    """Parse YAML text into ``model``; a ConfigError names the file, the line, the key and what was expected.

    Shared by every YAML file branchops reads (the configuration, the serving release)."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {size:,} bytes; a {what} file is at most {MAX_CONFIG_BYTES:,} bytes")
    try:
        _check_shape(text, source)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _refuse_duplicate_keys(root, source)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else str(source)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: {shape}, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            # pydantic adds the discriminator's value (e.g. 'webhook') after a list index: not a key in the
            # file
            loc = tuple(
                p
                for i, p in enumerate(error["loc"])
                if not (i > 0 and isinstance(error["loc"][i - 1], int) and p in NOTIFIER_KINDS)
            )
            key = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_of(_node_for(root, loc))
            lines.append(f"{source}:{line or '?'}: {key}: {_describe(error)}")
        raise ConfigError(f"invalid {what}\n  " + "\n  ".join(lines)) from None


def parse_config(text: str, source: str | Path = "<string>") -> BranchopsConfig:
    """Parse and validate config text; raise ConfigError naming file, line, key and what was expected."""
    config = validate_yaml(
        BranchopsConfig,
        text,
        source,
        what="configuration",
        shape="the configuration must be a mapping of sections",
    )
    config._source = Path(source) if source != "<string>" else None
    return config


def load_config(repo_root: str | Path = ".", path: str | Path | None = None) -> BranchopsConfig:
    from branchops.files import read_text

    file = Path(path) if path else Path(repo_root) / CONFIG_PATH
    text = read_text(file, missing="configuration file not found (run 'branchops init' to create one)")
    return parse_config(text, file)


def check_branches_exist(config: BranchopsConfig, repo: Any) -> None:
    """Every branch the configuration maps a stage to exists (as ``<remote>/<branch>`` when records are
    pushed to a remote): a typo in a branch name would otherwise make every run of that stage 'nothing to
    do'."""
    from branchops import gitops

    remote = config.git.remote
    names = sorted({config.branch_for(stage) for stage in STAGES} | {config.branches.main})
    missing = [name for name in names if not gitops.branch_tip(repo, name, remote)]
    if missing:
        where = f"remote '{remote}' (after git fetch)" if remote else "this repository"
        raise ConfigError(
            f"{config.source or CONFIG_PATH}: branches.stages names branches that do not exist in "
            f"{where}: {', '.join(missing)}. Create them (branchops bootstrap does) or fix the names; "
            "--offline checks the file alone."
        )


def json_schema() -> dict[str, Any]:
    schema = BranchopsConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "branchops configuration (config/branchops.yaml)"
    return schema


def masked_view(config: BranchopsConfig) -> dict[str, Any]:
    """The effective configuration for display: secret references annotated, values never shown."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretRef):
            return {"secret": value.describe()}
        if isinstance(value, BaseModel):
            return {name: walk(getattr(value, name)) for name in type(value).model_fields}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(config)
