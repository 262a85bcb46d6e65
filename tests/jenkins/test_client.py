"""JenkinsClient through the real python-jenkins against the in-process Jenkins REST fake.

A fake, not an integration test: no Jenkins controller can run here (docs/architecture.md §7).
"""

from __future__ import annotations

import pytest

from branchops.ci.jenkins import sync_job
from branchops.ci.jenkins.client import JenkinsClient, make_client
from branchops.ci.jenkins.job import job_digest, render_job_xml
from branchops.errors import ConfigError, ExternalError

from .conftest import JENKINS_TOKEN_ENV, REPO_ROOT, production_config
from .fake_jenkins import CRUMB_FIELD, FREESTYLE, MULTIBRANCH, Build, FakeJenkins, Item, path_of


def client_for(fake: FakeJenkins, **overrides) -> tuple[JenkinsClient, str]:
    config = production_config(fake.url, **overrides)
    return make_client(config), render_job_xml(config, REPO_ROOT)


def test_sync_creates_the_folders_and_the_job_sending_the_crumb(fake_jenkins: FakeJenkins) -> None:
    client, xml = client_for(fake_jenkins)
    result = client.sync(xml)

    assert result.outcome == "created"
    assert result.job == "ml/djia/branchops"
    assert result.folders_created == ("ml", "ml/djia")
    assert fake_jenkins.item("ml").cls == "com.cloudbees.hudson.plugins.folder.Folder"
    job = fake_jenkins.item("ml/djia/branchops")
    assert job is not None and job.cls == MULTIBRANCH
    assert job_digest(job.config_xml) == job_digest(xml)
    assert job.scans == 1, "a new job is scanned at once"
    posts = [(path, headers) for method, path, headers in fake_jenkins.requests if method == "POST"]
    assert posts and all(headers.get(CRUMB_FIELD) == fake_jenkins.crumb for _, headers in posts)
    crumb_fetches = [p for m, p, _ in fake_jenkins.requests if p.startswith("/crumbIssuer/")]
    assert len(crumb_fetches) == 1, "python-jenkins fetches the crumb once and reuses it"


def test_second_sync_changes_nothing_although_jenkins_rewrote_the_xml(fake_jenkins: FakeJenkins) -> None:
    client, xml = client_for(fake_jenkins)
    client.sync(xml)
    stored = fake_jenkins.item("ml/djia/branchops").config_xml
    assert stored != xml  # Jenkins re-serialises config.xml: text comparison would always differ
    before = len(fake_jenkins.posts())

    result = client_for(fake_jenkins)[0].sync(xml)

    assert result.outcome == "unchanged"
    assert fake_jenkins.posts()[before:] == []
    assert fake_jenkins.item("ml/djia/branchops").scans == 1


def test_a_config_change_updates_the_job_in_place(fake_jenkins: FakeJenkins) -> None:
    client, xml = client_for(fake_jenkins)
    client.sync(xml)
    client2, xml2 = client_for(fake_jenkins, ci={"jenkins": {"scan_interval": "15m"}})

    result = client2.sync(xml2)

    assert result.outcome == "updated"
    job = fake_jenkins.item("ml/djia/branchops")
    assert "<interval>900000</interval>" in job.config_xml
    assert job.scans == 2
    assert [path_of(p) for p in fake_jenkins.posts() if p.endswith("/config.xml")] == ["ml/djia/branchops"]


def test_dry_run_reports_and_changes_nothing(fake_jenkins: FakeJenkins) -> None:
    client, xml = client_for(fake_jenkins)
    result = client.sync(xml, dry_run=True)
    assert result.outcome == "would create" and result.folders_created == ("ml", "ml/djia")
    assert fake_jenkins.posts() == []
    client.sync(xml)
    _, xml2 = client_for(fake_jenkins, ci={"jenkins": {"scan_interval": "4h"}})
    before = len(fake_jenkins.posts())
    assert client.sync(xml2, dry_run=True).outcome == "would update"
    assert fake_jenkins.posts()[before:] == []


def test_an_item_of_another_kind_is_never_overwritten(fake_jenkins: FakeJenkins) -> None:
    client, xml = client_for(fake_jenkins)
    client.sync(xml)
    folder = fake_jenkins.item("ml/djia")
    folder.children["branchops"] = Item("branchops", FREESTYLE, config_xml="<project/>")

    with pytest.raises(ExternalError, match="not a multibranch pipeline"):
        client.sync(xml)
    assert folder.children["branchops"].config_xml == "<project/>"


def test_a_job_where_a_folder_should_be_is_refused(fake_jenkins: FakeJenkins) -> None:
    fake_jenkins.root.children["ml"] = Item("ml", FREESTYLE, config_xml="<project/>")
    client, xml = client_for(fake_jenkins)
    with pytest.raises(
        ExternalError, match="'ml' exists and is a hudson.model.FreeStyleProject, not a folder"
    ):
        client.sync(xml)
    assert fake_jenkins.posts() == []


def test_a_wrong_token_is_reported_with_what_to_check(
    fake_jenkins: FakeJenkins, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(JENKINS_TOKEN_ENV, "not-the-token")
    client, xml = client_for(fake_jenkins)
    with pytest.raises(ExternalError) as err:
        client.sync(xml)
    message = str(err.value)
    assert "401" in message and "admin" in message and JENKINS_TOKEN_ENV in message
    assert "not-the-token" not in message
    assert fake_jenkins.item("ml") is None


def test_a_missing_permission_is_reported(fake_jenkins: FakeJenkins) -> None:
    client, xml = client_for(fake_jenkins)
    client.sync(xml)
    fake_jenkins.forbidden_posts.add("job/ml/job/djia/job/branchops/config.xml")
    _, xml2 = client_for(fake_jenkins, ci={"jenkins": {"scan_interval": "2h"}})
    with pytest.raises(ExternalError, match=r"403.*lacks the permission"):
        client.sync(xml2)
    assert "<interval>3600000</interval>" in fake_jenkins.item("ml/djia/branchops").config_xml


def test_no_token_in_the_environment_names_the_variable(
    fake_jenkins: FakeJenkins, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(JENKINS_TOKEN_ENV)
    client, xml = client_for(fake_jenkins)
    with pytest.raises(ConfigError, match=f"ci.jenkins.token.*{JENKINS_TOKEN_ENV}.*not set"):
        client.sync(xml)


def test_sync_job_refuses_a_drifted_jenkinsfile(fake_jenkins: FakeJenkins, tmp_path) -> None:
    import shutil

    for name in ("Jenkinsfile",):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(REPO_ROOT / "jenkins", tmp_path / "jenkins", ignore=shutil.ignore_patterns("rbac"))
    config = production_config(
        fake_jenkins.url,
        ci={
            "jenkins": {
                "credentials": {
                    "github": "gh-bot",
                    "kaggle": "kaggle-api",
                    "registry": "registry-push",
                    "kubeconfig": "kubeconfig",
                    "kubeflow": "kubeflow-token",
                }
            }
        },
    )
    with pytest.raises(ConfigError, match="'gh-bot' is not bound"):
        sync_job(config, tmp_path)
    assert fake_jenkins.posts() == []
    assert sync_job(production_config(fake_jenkins.url), tmp_path).outcome == "created"


def _job_with_branches(fake: FakeJenkins) -> JenkinsClient:
    client, xml = client_for(fake)
    client.sync(xml)
    job = "ml/djia/branchops"
    fake.add_branch(job, "training", [Build(1, "SUCCESS", ["ok\n"]), Build(2, "FAILURE", ["boom\n"])])
    fake.add_branch(job, "deploy-model", [Build(1, None, ["rolling out\n"], lines_until_done=3)])
    fake.add_branch(job, "feature/x", [Build(4, "SUCCESS", ["fine\n"])])
    fake.add_branch(job, "kf-pipeline", [])
    fake.add_branch(job, "PR-3", [Build(1, "SUCCESS", ["tests\n"])])
    fake.queue.append(
        {
            "id": 17,
            "why": "Waiting for next available executor",
            "task": {
                "name": "kf-pipeline",
                "url": f"{fake.url}job/ml/job/djia/job/branchops/job/kf-pipeline/",
            },
        }
    )
    fake.queue.append({"id": 18, "why": "other job", "task": {"name": "x", "url": f"{fake.url}job/other/"}})
    return client


def test_status_shows_the_last_build_of_every_branch(fake_jenkins: FakeJenkins) -> None:
    client = _job_with_branches(fake_jenkins)
    rows = {row.branch: row for row in client.status()}

    assert set(rows) == {"training", "deploy-model", "feature/x", "kf-pipeline", "PR-3"}
    assert (rows["training"].number, rows["training"].result) == (2, "FAILURE")
    assert rows["training"].started_at == "2023-11-14T22:13:20+00:00" and rows["training"].duration_s == 65
    assert rows["deploy-model"].result == "RUNNING" and rows["deploy-model"].duration_s is None
    assert rows["feature/x"].job == "feature%2Fx" and rows["feature/x"].number == 4
    assert rows["kf-pipeline"].number is None and rows["kf-pipeline"].queued
    assert rows["kf-pipeline"].queue_reason == "Waiting for next available executor"
    assert not rows["training"].queued


def test_status_of_a_missing_job_says_to_sync(fake_jenkins: FakeJenkins) -> None:
    client, _ = client_for(fake_jenkins)
    with pytest.raises(ExternalError, match="branchops jenkins sync"):
        client.status()


def test_trigger_scan_posts_to_the_multibranch_build_endpoint(fake_jenkins: FakeJenkins) -> None:
    client, xml = client_for(fake_jenkins)
    client.sync(xml, scan=False)
    client.trigger_scan()
    client.trigger_scan()
    assert fake_jenkins.item("ml/djia/branchops").scans == 2
    assert fake_jenkins.posts()[-1] == "/job/ml/job/djia/job/branchops/build?delay=0"


def test_trigger_scan_of_a_disabled_project_fails_clearly(fake_jenkins: FakeJenkins) -> None:
    client, xml = client_for(fake_jenkins)
    client.sync(xml, scan=False)
    fake_jenkins.item("ml/djia/branchops").disabled = True
    with pytest.raises(ExternalError, match="triggering a scan of ml/djia/branchops failed"):
        client.trigger_scan()


def test_logs_follow_a_running_build_to_its_end(fake_jenkins: FakeJenkins) -> None:
    client = _job_with_branches(fake_jenkins)
    sleeps: list[float] = []
    client._sleep = sleeps.append

    chunks = list(client.logs("deploy-model"))

    assert "".join(chunks) == "rolling out\nstep 1\nstep 2\nstep 3\nFinished: SUCCESS\n"
    assert len(sleeps) == 2  # read 1 and 2 say X-More-Data; read 3 ends the build
    starts = [p.split("start=")[1] for m, p, _ in fake_jenkins.requests if "progressiveText" in p]
    assert starts == ["0", "19", "26"], "each read starts where X-Text-Size said the text ended"


def test_logs_without_follow_read_once(fake_jenkins: FakeJenkins) -> None:
    client = _job_with_branches(fake_jenkins)
    client._sleep = lambda s: pytest.fail("must not poll")
    assert list(client.logs("training", follow=False)) == ["boom\n"]
    assert list(client.logs("training", build=1, follow=False)) == ["ok\n"]
    assert list(client.logs("feature/x", follow=False)) == ["fine\n"]


def test_logs_of_an_unknown_branch_or_build(fake_jenkins: FakeJenkins) -> None:
    client = _job_with_branches(fake_jenkins)
    with pytest.raises(ExternalError, match=r"no job for branch 'ds1'.*known: .*training"):
        list(client.logs("ds1"))
    with pytest.raises(ExternalError, match="'kf-pipeline' has no build yet"):
        list(client.logs("kf-pipeline"))
    with pytest.raises(ExternalError, match="build #9 of branch 'training' does not exist"):
        list(client.logs("training", build=9))


def test_check_reports_user_and_version(fake_jenkins: FakeJenkins) -> None:
    client, _ = client_for(fake_jenkins)
    assert client.check() == {"user": "admin", "version": fake_jenkins.version}
