"""``branchops demo``: the whole workflow (docs/architecture.md §1) on one machine, on the embedded
defaults, with a project scaffolded from a template (the reference project by default).

It plays the people: a data scientist (``ds1``) commits and opens merge requests, the team lead and the
head of data science approve them, and each merge runs its stage through the local CI runner, exactly
as ``branchops mr ...`` would from a shell. What it leaves in the work directory is an ordinary branchops
repository: every command works on it afterwards.

When the template says how (its ``demo.replay``), the demo then closes the loop (issue 15): the study
trained on the data up to ``demo.data_until``; the trading days after it are replayed as traffic through
TensorFlow Serving's REST API, one ``:predict`` per day with that day's features as the project itself
computes them, and their outcomes are written once the prices that decide them have come; ``branchops
monitor`` checks the logged traffic until it proposes a retrain, which the head of data science approves,
and the retrained model rolls forward through the same gated path as the first.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
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
from branchops.scaffold import (
    Template,
    data_section,
    deep_merge,
    init_project,
    load_template,
    project_config,
)

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
    # closing the loop (a template with demo.replay): the first study's data window, the days replayed,
    # the monitor checks, the retraining merge request and the version it rolled forward to
    data_until: str | None = None
    replayed_days: list[str] = field(default_factory=list)
    monitor_checks: list[dict[str, Any]] = field(default_factory=list)
    retrain_merge_request: int | None = None
    retrained_until: str | None = None
    retrained_version: int | None = None
    retrained_metrics: dict[str, Any] | None = None


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
        # the study's own settings (its data window, how many runs at once, its KPIs), as the template says
        config = deep_merge(config, self.template.demo.get("config") or {})
        until = (config.get("data") or {}).get("until")
        self.result.data_until = str(until) if until else None
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
            f"(data: {data['source']}"
            + (f" {data.get('folder')}" if data.get("folder") else "")
            + (f", up to {self.result.data_until}" if self.result.data_until else "")
            + ")"
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
        from branchops.serving.base import SAMPLE_REQUEST_ID

        answer = serving.client().predict(rows, request_id=SAMPLE_REQUEST_ID)
        self.result.sample_predictions = {k: v[:3] for k, v in meta["sample"]["predictions"].items()}
        self.result.steps.append(Step("predict (REST :predict)", "done", time.monotonic() - t))
        echo(f"   POST {serving.client().model_url()}:predict with 3 rows of the export's sample")
        echo(f"   -> {json.dumps(answer)}")
        echo(f"   (recorded at export time: {json.dumps(self.result.sample_predictions)})")
        if self.template.demo.get("replay"):
            self.close_the_loop(serving, meta)
        return self.result

    # -- closing the loop ----------------------------------------------------------------------------
    def close_the_loop(self, serving, meta: dict[str, Any]) -> None:
        """Replay the days after the study's data window as traffic, ``days_per_check`` trading days
        between two ``branchops monitor`` checks, until monitor proposes a retrain; then approve it, merge
        it (training on the refreshed window), approve the release and roll forward."""
        echo, replay = self.echo, self.template.demo["replay"]
        from branchops.runner import working_config

        config = working_config(gitops.open_repo(self.workdir))
        drift = config.monitoring.drift
        per_check = max(int(replay.get("days_per_check") or 0), drift.min_rows)
        first_day = self.result.data_until or ""
        t = time.monotonic()
        days = self.days_after_window(config, replay["rows"], meta, first_day)
        self.result.steps.append(
            Step("the replayed days' features (project code)", "done", time.monotonic() - t)
        )
        if not days["dates"]:
            raise StageFailed(f"no trading day after {first_day} in the data: nothing to replay")
        checks = -(-len(days["dates"]) // per_check)
        echo(
            f"9. the world moves on: {len(days['dates'])} trading days after {first_day or 'the data'} "
            f"({days['dates'][0]} .. {days['dates'][-1]}) replayed as traffic, branchops monitor after each "
            f"{per_check} ({checks} checks; it proposes a retrain after {drift.consecutive_checks} drifted "
            "checks in a row, or when the live metric falls below the validated one)"
        )
        client = serving.client()
        outcomes_dir = (
            gitops.state_dir(gitops.open_repo(self.workdir)) / config.monitoring.live_metric.outcomes_folder
        )
        proposal = None
        for check_number, start in enumerate(range(0, len(days["dates"]), per_check), 1):
            batch = range(start, min(start + per_check, len(days["dates"])))
            t = time.monotonic()
            for i in batch:
                # one request per trading day, keyed by the business key its outcome will carry
                client.predict(instances=[days["X"][i]], request_id=f"{meta['target']}/{days['dates'][i]}")
            what = f"replay {days['dates'][batch.start]} .. {days['dates'][batch.stop - 1]}"
            self.result.replayed_days += days["dates"][batch.start : batch.stop]
            self.result.steps.append(Step(what, f"{len(batch)} :predict", time.monotonic() - t))
            written = self.write_outcomes(outcomes_dir, meta["target"], days, replayed=batch.stop)
            echo(
                f"   {what}: {len(batch)} :predict (X-Request-ID {meta['target']}/<day>), "
                f"{written} outcomes written (labels known by {days['dates'][batch.stop - 1]})"
            )
            t = time.monotonic()
            check = run_monitor(self.workdir)
            self.result.monitor_checks.append(check)
            proposed = check.get("merge_request") or {}
            proposal = self.open_retrain_request(config) or proposal
            self.result.steps.append(
                Step(
                    f"branchops monitor (check {check_number})",
                    f"{check.get('verdict')}"
                    + (f", !{proposal.number} {proposed.get('action')}" if proposed and proposal else ""),
                    time.monotonic() - t,
                    check.get("record"),
                )
            )
            echo(
                f"   branchops monitor: {monitor_verdict(check)}"
                + (
                    f"; retraining merge request !{proposal.number} {proposed.get('action')} "
                    f"(data.until {check.get('data_until')})"
                    if proposed and proposal
                    else ""
                )
            )
        if proposal is None:
            raise StageFailed(
                f"monitor proposed no retrain after {len(self.result.monitor_checks)} checks of "
                f"{len(days['dates'])} replayed days"
            )
        self.retrain(config, proposal)

    def days_after_window(
        self, config, function: str, meta: dict[str, Any], first_day: str
    ) -> dict[str, Any]:
        """Every labelled trading day after ``first_day``: its features as the served model takes them and
        its label, from the project's own code (``demo.replay.rows``, ``module:function``) run in the
        project's checkout on the prices in the data volume."""
        from branchops.storage import make_storage

        storage = make_storage(config, gitops.state_dir(gitops.open_repo(self.workdir)))
        data_dir = storage.step_dir(storage.ensure_volume(config.storage.data_volume.name), "data")
        module, _, name = function.partition(":")
        arguments = {
            "data_dir": data_dir,
            "target": meta["target"],
            "target_kind": meta.get("target_kind") or "direction",
            "window": meta.get("window") or 1,
            # from the day after the window: the first day the study never saw
            "first_day": (date.fromisoformat(first_day) + timedelta(days=1)).isoformat() if first_day else "",
        }
        script = (
            "import json, sys\n"
            f"from {module} import {name} as rows\n"
            "out = rows(**json.loads(sys.argv[1]))\n"
            "json.dump({'dates': [str(d) for d in out['dates']], 'X': out['X'].tolist(),\n"
            "           'y': [int(v) for v in out['y']], 'label_horizon': int(out['label_horizon'])},\n"
            "          sys.stdout)\n"
        )
        # the project's code, in its own checkout (as its pipeline steps run it), not in branchops' process
        git.Repo(self.workdir).git.checkout("--quiet", "main")
        proc = subprocess.run(
            [sys.executable, "-c", script, json.dumps(arguments)],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise StageFailed(f"demo.replay.rows {function} failed: {proc.stderr.strip()[-2000:]}")
        return json.loads(proc.stdout)

    @staticmethod
    def write_outcomes(folder: Path, target: str, days: dict[str, Any], replayed: int) -> int:
        """The outcomes known once the first ``replayed`` days have come (design: CSV ``request_id,label``):
        a day's label is known when the last day of its window has come, ``label_horizon`` - 1 days
        later. One file per check with the newly known ones; returns how many it holds."""
        known = max(0, replayed - (int(days["label_horizon"]) - 1))
        folder.mkdir(parents=True, exist_ok=True)
        done = sum(len(f.read_text().splitlines()) - 1 for f in folder.glob("demo-*.csv"))
        if known <= done:
            return 0
        lines = ["request_id,label"] + [
            f"{target}/{days['dates'][i]},{days['y'][i]}" for i in range(done, known)
        ]
        path = folder / f"demo-{days['dates'][known - 1]}.csv"
        path.with_suffix(".tmp").write_text("\n".join(lines) + "\n")
        path.with_suffix(".tmp").rename(path)  # whole files only: monitor may read the folder any time
        return known - done

    def open_retrain_request(self, config):
        """The open retraining merge request monitor opened into training, if any."""
        forge = LocalForge(gitops.open_repo(self.workdir))
        branch, training = config.monitoring.retrain.branch, config.branch_for("training")
        return next((m for m in forge.list("open", target=training) if m.source == branch), None)

    def retrain(self, config, proposal) -> None:
        echo = self.echo
        training_branch = config.branch_for("training")
        proposed = yaml.safe_load(git.Repo(self.workdir).git.show(f"{proposal.source}:config/branchops.yaml"))
        self.result.retrain_merge_request = proposal.number
        self.result.retrained_until = str((proposed.get("data") or {}).get("until"))
        echo(
            f"10. monitor opened !{proposal.number} {proposal.source} -> {training_branch} as "
            f"{proposal.author}: '{proposal.title}' (data.until {self.result.data_until} -> "
            f"{self.result.retrained_until}); the head of data science reads the evidence and approves"
        )
        forge = LocalForge(gitops.open_repo(self.workdir))
        forge.approve(proposal.number, HEAD_OF_DS)
        reports = self.merge_and_wait("training", proposal.number, LEAD)
        training = self.record(f"retraining up to {self.result.retrained_until}", reports)
        best = training.outputs.get("best") or {}
        self.result.retrained_metrics = best.get("metrics")
        deploy_mr = (training.outputs.get("deploy_merge_request") or {}).get("number")
        if not deploy_mr:
            raise StageFailed("the retraining passed its KPIs but opened no merge request into deploy-model")
        echo(f"11. the retrained model: !{deploy_mr} into deploy-model; the head of data science merges it")
        forge.approve(deploy_mr, HEAD_OF_DS)
        reports = self.merge_and_wait("deploy-model", deploy_mr, HEAD_OF_DS)
        self.record("deploy-model (roll forward)", reports)
        self.result.retrained_version = (best.get("model") or {}).get("version")
        echo(f"   serving version {self.result.retrained_version} (was {self.result.served_version})")


def run_monitor(workdir: Path) -> dict[str, Any]:
    """One ``branchops monitor`` check of the project, as a dict (its JSON document)."""
    from branchops.monitoring.monitor import check

    return check(workdir).to_dict()


def monitor_verdict(check: dict[str, Any]) -> str:
    """A check's verdict in a few words for the story and the timeline."""
    features = check.get("features") or {}
    drifted = check.get("drifted_features") or []
    words = [f"{check.get('verdict')} ({check.get('rows', 0)} rows"]
    if features:
        words[0] += f", {len(drifted)} of {len(features)} features drifted"
    words[0] += ")"
    live = check.get("live_metric") or {}
    if live.get("value") is not None:
        words.append(
            f"live {live.get('name')} {live['value']:.3f} [{live['low']:.3f}, {live['high']:.3f}]"
            + (f" vs {live['validated']:.3f} validated" if live.get("validated") is not None else "")
        )
    if check.get("alarm"):
        words.append("ALARM")
    return "; ".join(words)


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
    if result.retrained_version is not None:
        m = result.retrained_metrics or {}
        lines.append(
            f"the loop: trained up to {result.data_until}, {len(result.replayed_days)} days after it "
            f"replayed, {len(result.monitor_checks)} monitor checks; retraining "
            f"!{result.retrain_merge_request} on the data up to {result.retrained_until} -> version "
            f"{result.retrained_version} serves" + (f" ({m['summary']})" if m.get("summary") else "")
        )
    if result.synthetic:
        lines.append("!!! trained on SYNTHETIC data: these numbers say nothing about the real world !!!")
    d = result.workdir
    lines += [
        "",
        f"try next, in {d}:",
        f"  branchops -C {d} status",
        f"  branchops -C {d} lineage {result.retrained_version or result.served_version}",
        f"  branchops -C {d} predict --sample",
        f"  branchops -C {d} mr list",
        f"  branchops -C {d} rollback --as ds1      # prepares the revert as a merge request",
        f"  branchops -C {d} serve stop",
    ]
    return "\n".join(lines)
