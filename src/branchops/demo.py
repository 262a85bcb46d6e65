"""``branchops demo``: the whole workflow (docs/architecture.md §1) on one machine, on the embedded
defaults, with a project scaffolded from a template (the reference project by default).

It plays the people: a data scientist (``ds1``) commits and opens merge requests, the team lead and the
head of data science approve them, and each merge runs its stage through the local CI runner, exactly
as ``branchops mr ...`` would from a shell. What it leaves in the work directory is an ordinary branchops
repository: every command works on it afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import git
import yaml

from branchops import gitops, preflight
from branchops.errors import BadArgument, BranchopsError, StageFailed
from branchops.forge.local import LocalForge
from branchops.merging import merge_and_run
from branchops.progress import heartbeat
from branchops.runner import RunReport
from branchops.scaffold import Template, data_section, init_project, load_template, project_config

log = logging.getLogger("branchops.demo")

DATA_SCIENTIST, LEAD, HEAD_OF_DS = "ds1", "lead", "head-of-ds"
APPROVERS = {
    "build-components": [LEAD],
    "kf-pipeline": [LEAD],
    "training": [LEAD, HEAD_OF_DS],
    "deploy-model": [HEAD_OF_DS],
}


def how_to_get_data(template: Template, kaggle_dataset: str | None) -> str:
    ways = ["pass --data DIR (a folder holding the raw data files)"]
    if kaggle_dataset:
        ways.append(f"set KAGGLE_USERNAME and KAGGLE_KEY to download {kaggle_dataset}")
    if template.synthetic_data:
        ways.append("pass --synthetic to try the workflow on generated data")
    return "no data: " + ", or ".join(ways)


@dataclass
class Step:
    what: str
    outcome: str
    seconds: float
    record: str | None = None


@dataclass
class DemoResult:
    workdir: Path
    steps: list[Step] = field(default_factory=list)
    sample_predictions: dict[str, Any] | None = None
    served_version: int | None = None
    synthetic: bool = False
    metrics: dict[str, Any] | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def data_source(template: Template, data_dir: str | None, synthetic: bool) -> dict[str, Any]:
    """The demo's data section: a folder, generated data, or the template's Kaggle dataset when credentials
    are there to download it."""
    if data_dir and not any(p.is_file() for p in Path(data_dir).glob(template.data_files)):
        raise BranchopsError(f"--data {data_dir}: no '{template.data_files}' files there")
    section = data_section(template, data_dir, synthetic)
    if section:
        return section
    own = (yaml.safe_load(template.config_text()) or {}).get("data") or {}
    if own and own.get("source") != "kaggle":
        return own  # the template brings its data itself (a folder or a script)
    kaggle = (own.get("kaggle") or {}).get("dataset") if own.get("source") == "kaggle" else None
    kaggle_json = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if kaggle and (
        (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) or kaggle_json.exists()
    ):
        return own
    raise BranchopsError(how_to_get_data(template, kaggle))


class Demo:
    def __init__(self, workdir: Path, template: Template, echo: Callable[[str], None]):
        self.workdir = workdir
        self.template = template
        self.echo = echo
        self.result = DemoResult(workdir)

    def title(self, stage: str) -> str:
        return (self.template.demo.get("titles") or {}).get(stage) or f"{stage} of {self.template.title}"

    # -- the people's actions ------------------------------------------------------------------------
    def commit_as(self, user: str, branch: str, files: dict[str, str], message: str) -> str:
        repo = git.Repo(self.workdir)
        repo.git.checkout("--quiet", branch)
        for path, content in files.items():
            target = self.workdir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
            repo.git.add(path)
        env = gitops.Identity(user, f"{user}@users.local").env()
        repo.git.commit("--quiet", "-m", message, env=env)
        return repo.head.commit.hexsha

    def merge_request(
        self,
        source: str,
        target: str,
        title: str,
        body: str,
        approver: str | None,
        merger: str,
        author: str = DATA_SCIENTIST,
    ) -> tuple[int, list[RunReport]]:
        forge = LocalForge(gitops.open_repo(self.workdir))
        mr, _ = forge.open_merge_request(source, target, title, body, author)
        if approver:
            forge.approve(mr.number, approver)
        self.echo(
            f"  !{mr.number} {source} -> {target}: {title}"
            + (f" — approved by {approver}" if approver else " — NOT approved")
        )
        return mr.number, self.merge_and_wait(target, mr.number, merger)

    def merge_and_wait(self, target: str, number: int, merger: str) -> list[RunReport]:
        """Merge and run the stage, saying it is still running (with its elapsed time) while it does: a
        stage is minutes of work between two lines of the story."""
        with heartbeat(target, logger=log):
            _, reports = merge_and_run(self.workdir, number, merger)
        return reports

    def record(self, what: str, reports: list[RunReport], expected: str = "succeeded") -> RunReport:
        report = reports[0]
        outcome = (
            "refused as expected" if report.status == "refused" and expected == "refused" else report.status
        )
        self.result.steps.append(Step(what, outcome, report.duration_s or 0.0, report.record_path))
        self.echo(
            f"  {what}: {outcome}"
            + (f" in {report.duration_s:.1f}s" if report.duration_s else "")
            + f" — {report.message}"
        )
        if report.status != expected:
            failure = StageFailed(f"demo step '{what}' ended {report.status}: {report.message}")
            failure.exit_code = report.exit_code or failure.exit_code  # bad data stays 7, and so on
            raise failure
        return report

    # -- the story -----------------------------------------------------------------------------------
    def play(self, data: dict[str, Any]) -> DemoResult:
        echo = self.echo
        t0 = time.monotonic()
        init_project(
            self.workdir,
            template=self.template.name,
            approvers=APPROVERS,
            user=DATA_SCIENTIST,
            overrides={"data": data, "serving": {"local": {"port": free_port()}}},
        )
        self.result.steps.append(
            Step(
                f"scaffold the {self.template.name} template (branchops init)", "done", time.monotonic() - t0
            )
        )
        echo(
            f"1. scaffolded {self.workdir} from template {self.template.name} (branches main, ds1, "
            "build-components, kf-pipeline, training, deploy-model)"
        )

        # The data scientist's change: the experiments of this study, as the template's demo lists them.
        config_path = self.workdir / "config" / "branchops.yaml"
        config = yaml.safe_load(config_path.read_text())
        experiments = self.template.demo.get("experiments") or config["training"]["experiments"]
        config["training"]["experiments"] = experiments
        header = "".join(line + "\n" for line in config_path.read_text().splitlines() if line.startswith("#"))
        self.commit_as(
            DATA_SCIENTIST,
            "ds1",
            {"config/branchops.yaml": header + yaml.safe_dump(config, sort_keys=False)},
            "Experiments: " + ", ".join(e["name"] for e in experiments),
        )
        self.result.synthetic = (
            data["source"] == "script" and data.get("script") == self.template.synthetic_data
        )
        echo(
            f"2. ds1 committed the experiments {', '.join(e['name'] for e in experiments)} "
            f"(data: {data['source']}" + (f" {data.get('folder')}" if data.get("folder") else "") + ")"
        )
        if self.result.synthetic:
            echo("   !!! SYNTHETIC DATA: the model will be trained on generated data, not real data !!!")

        echo("3. the gate: an unapproved merge request into build-components")
        repo = git.Repo(self.workdir)
        repo.git.branch("ds1-unreviewed", "build-components")  # only the unreviewed commit rides on it
        self.commit_as(
            DATA_SCIENTIST,
            "ds1-unreviewed",
            {"components/UNREVIEWED.md": "an unreviewed change\n"},
            "An unreviewed change",
        )
        number, reports = self.merge_request(
            "ds1-unreviewed",
            "build-components",
            "Unreviewed change",
            "Merged without approval.",
            None,
            DATA_SCIENTIST,
        )
        self.record("build-components on an unapproved merge", reports, expected="refused")
        # The team lead reverts the unreviewed merge on the branch: until then every later run of
        # build-components would refuse too, naming it.
        repo.git.checkout("--quiet", "build-components")
        repo.git.revert(
            "--no-edit",
            "-m",
            "1",
            repo.commit("build-components").hexsha,
            env=gitops.Identity(LEAD, f"{LEAD}@users.local").env(),
        )
        repo.git.checkout("--quiet", "ds1")
        repo.git.branch("-D", "ds1-unreviewed")
        echo(f"   nothing ran; the team lead reverted the unreviewed merge !{number} on build-components")

        echo("4. build-components: merge request from ds1, approved by the team lead")
        _, reports = self.merge_request(
            "ds1",
            "build-components",
            self.title("build-components"),
            "The pipeline's components, with their tests and images.",
            LEAD,
            LEAD,
        )
        self.record("build-components", reports)

        echo("5. kf-pipeline: merge request from ds1, approved by the team lead")
        _, reports = self.merge_request(
            "ds1",
            "kf-pipeline",
            self.title("kf-pipeline"),
            "The training pipeline, compiled and uploaded.",
            LEAD,
            LEAD,
        )
        self.record("kf-pipeline", reports)

        echo("6. training: merge request from ds1, approved by the head of data science")
        _, reports = self.merge_request(
            "ds1",
            "training",
            self.title("training"),
            f"Experiments: {', '.join(e['name'] for e in experiments)}.",
            HEAD_OF_DS,
            LEAD,
        )
        training = self.record("training", reports)
        best = training.outputs.get("best") or {}
        self.result.metrics = best.get("metrics")
        deploy_mr = (training.outputs.get("deploy_merge_request") or {}).get("number")
        if not deploy_mr:
            raise StageFailed("training passed its KPIs but opened no merge request into deploy-model")
        echo(f"   training opened !{deploy_mr} into deploy-model with its report")

        echo(f"7. deploy-model: the head of data science reads !{deploy_mr} and merges it")
        forge = LocalForge(gitops.open_repo(self.workdir))
        forge.approve(deploy_mr, HEAD_OF_DS)
        reports = self.merge_and_wait("deploy-model", deploy_mr, HEAD_OF_DS)
        self.record("deploy-model", reports)
        self.result.served_version = (best.get("model") or {}).get("version")

        echo("8. a prediction through TensorFlow Serving's REST API")
        from branchops.runner import working_config
        from branchops.serving import make_serving
        from branchops.serving.base import find_version_dir, read_model_metadata

        git.Repo(self.workdir).git.checkout("--quiet", "main")
        serving = make_serving(working_config(gitops.open_repo(self.workdir)), gitops.state_dir(repo))
        meta = read_model_metadata(find_version_dir(serving.base_path, self.result.served_version))
        rows = meta["sample"]["instances"][:3]
        t = time.monotonic()
        answer = serving.client().predict(rows)
        self.result.sample_predictions = {k: v[:3] for k, v in meta["sample"]["predictions"].items()}
        self.result.steps.append(Step("predict (REST :predict)", "done", time.monotonic() - t))
        echo(f"   POST {serving.client().model_url()}:predict with 3 rows of the export's sample")
        echo(f"   -> {json.dumps(answer)}")
        echo(f"   (recorded at export time: {json.dumps(self.result.sample_predictions)})")
        return self.result


def run_demo(
    workdir: str | Path,
    data_dir: str | None = None,
    synthetic: bool = False,
    echo: Callable[[str], None] = print,
    template: str | None = None,
) -> DemoResult:
    target = Path(workdir).resolve()
    if target.exists() and any(target.iterdir()):
        raise BadArgument(f"{target} exists and is not empty: give a new --workdir")
    chosen = load_template(template)
    data = data_source(chosen, data_dir, synthetic)
    # Everything the four stages need must be installed before the first one starts, not found missing
    # at the third.
    from branchops.config import STAGES, parse_config

    preflight.check(
        parse_config(
            project_config(chosen, APPROVERS, None, False, {"data": data}), "the demo's configuration"
        ),
        STAGES,
    )
    demo = Demo(target, chosen, echo)
    return demo.play(data)


def timeline(result: DemoResult) -> str:
    lines = ["", "timeline", f"  {'step':<44} {'outcome':<22} {'seconds':>8}  record"]
    for step in result.steps:
        lines.append(f"  {step.what:<44} {step.outcome:<22} {step.seconds:>8.1f}  {step.record or ''}")
    total = sum(s.seconds for s in result.steps)
    lines.append(f"  {'total':<44} {'':<22} {total:>8.1f}")
    if result.metrics:
        m = result.metrics
        numbers = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
        lines += [
            "",
            f"model version {result.served_version}: {numbers}"
            + (f" — {m['summary']}" if m.get("summary") else ""),
        ]
    if result.synthetic:
        lines.append("!!! trained on SYNTHETIC data: these numbers say nothing about the real world !!!")
    d = result.workdir
    lines += [
        "",
        f"try next, in {d}:",
        f"  branchops -C {d} status",
        f"  branchops -C {d} lineage {result.served_version}",
        f"  branchops -C {d} predict --sample",
        f"  branchops -C {d} mr list",
        f"  branchops -C {d} rollback --as ds1      # prepares the revert as a merge request",
        f"  branchops -C {d} serve stop",
    ]
    return "\n".join(lines)
