"""The Jenkinsfile and the jenkins/ files: Groovy syntax (Debian's groovy, real), the declarative
structure read back and compared with config, the agent pod against the Kubernetes schema."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from branchops.ci.jenkins.jenkinsfile import (
    CREDENTIAL_KINDS,
    check_jenkinsfile,
    credential_ids,
    parse_groovy_blocks,
    read_jenkinsfile,
)
from branchops.config import load_config
from branchops.errors import ConfigError
from branchops.secrets import credential_env_name

from .conftest import REPO_ROOT, production_config

JENKINSFILE = (REPO_ROOT / "Jenkinsfile").read_text(encoding="utf-8")
GROOVY_CHECK = Path(__file__).with_name("check_groovy_syntax.groovy")


# -- syntax: Debian's groovy ------------------------------------------------------------------------


def groovy_env() -> dict[str, str]:
    if shutil.which("groovy") is None:
        pytest.skip("groovy is not installed (apt-get install groovy; .ci/setup.d/jenkins.sh does it)")
    env = dict(os.environ)
    if not env.get("JAVA_HOME") and not Path("/usr/lib/jvm/default-java/bin/java").exists():
        java = shutil.which("java")
        if java is None:
            pytest.skip("groovy needs a Java runtime (apt-get install default-jre-headless)")
        env["JAVA_HOME"] = str(Path(os.path.realpath(java)).parents[1])
    return env


def groovy_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["groovy", str(GROOVY_CHECK), str(path)],
        check=False,
        capture_output=True,
        text=True,
        env=groovy_env(),
        timeout=300,
    )


def test_groovy_parses_the_jenkinsfile() -> None:
    result = groovy_check(REPO_ROOT / "Jenkinsfile")
    assert result.returncode == 0, result.stderr


def test_groovy_check_rejects_a_broken_jenkinsfile(tmp_path: Path) -> None:
    broken = tmp_path / "Jenkinsfile"
    broken.write_text(JENKINSFILE.replace("post {", "post {{", 1))
    result = groovy_check(broken)
    assert result.returncode == 1 and "Jenkinsfile" in result.stderr


def test_every_shell_script_of_the_jenkinsfile_parses() -> None:
    scripts = re.findall(r"'''(.*?)'''", JENKINSFILE, re.DOTALL)
    assert len(scripts) >= 6
    for script in scripts:
        result = subprocess.run(["bash", "-n", "-c", script], check=False, capture_output=True, text=True)
        assert result.returncode == 0, (script, result.stderr)


# -- structure read back ----------------------------------------------------------------------------


def test_the_declarative_structure() -> None:
    model = read_jenkinsfile(JENKINSFILE)
    assert model.agent_yaml_file == "jenkins/agent-pod.yaml"
    assert model.stages == ["Bot commit", "Set up", "Component tests", "Stage"]
    assert set(model.options) == {"disableConcurrentBuilds", "timeout", "buildDiscarder", "timestamps"}
    assert model.timeout_s == 6 * 3600
    assert model.post_conditions == ["always", "success", "failure"]
    assert model.run_commands == [
        '.venv/bin/branchops run --for-branch "$BRANCH_NAME" --commit "$GIT_COMMIT" || status=$?'
    ]
    assert model.bot_marker == "Branchops-Bot"
    assert model.bot_guarded == ["Set up", "Component tests", "Stage"]
    assert model.run_stage_guarded and model.run_inside_credentials
    assert "reports/junit/components.xml" in model.junitxml_paths
    assert model.archived == ["reports/**"]
    assert not model.uses_set_x and not model.groovy_interpolated_secrets and not model.traced_scripts


def test_credentials_are_the_ids_config_names_bound_where_branchops_reads_them() -> None:
    model = read_jenkinsfile(JENKINSFILE)
    ids = credential_ids(production_config())
    assert {b.credentials_id for b in model.bindings} == set(ids.values())
    for key, cred_id in ids.items():
        binding = next(b for b in model.bindings if b.credentials_id == cred_id)
        assert binding.kind == CREDENTIAL_KINDS[key]
        assert binding.secret_variable == credential_env_name(cred_id)


@pytest.mark.parametrize("config_name", ["reference", "production"])
def test_the_jenkinsfile_is_in_step_with_config(config_name: str) -> None:
    config = load_config(REPO_ROOT) if config_name == "reference" else production_config()
    assert check_jenkinsfile(config, REPO_ROOT) == []


DRIFTS = {
    "a missing option": (("    timestamps()\n", ""), "`timestamps` is missing"),
    "a hard-coded stage": (
        (
            '.venv/bin/branchops run --for-branch "$BRANCH_NAME" --commit "$GIT_COMMIT"',
            '.venv/bin/branchops run training --commit "$GIT_COMMIT"',
        ),
        "no step runs",
    ),
    "the branch tip built instead of the checked-out commit": (
        (
            '.venv/bin/branchops run --for-branch "$BRANCH_NAME" --commit "$GIT_COMMIT"',
            '.venv/bin/branchops run --for-branch "$BRANCH_NAME"',
        ),
        "no step runs",
    ),
    "set-up for a record commit": (
        (
            "stage('Set up') {\n            when { environment name: 'BRANCHOPS_BOT_COMMIT', "
            "value: 'false' }",
            "stage('Set up') {",
        ),
        "Set up must be skipped for branchops' own commits",
    ),
    "no bot-commit check": (
        ("Branchops-Bot: true[[:space:]]*'", "[[:space:]]*'"),
        "the first stage must stop a build of branchops' own record commit",
    ),
    "another bot marker": (
        ("Branchops-Bot: true[[:space:]]*'", "Bot: true[[:space:]]*'"),
        "looks for the trailer 'Bot', but bot.marker is 'Branchops-Bot'",
    ),
    "shell tracing": (
        (
            "set -euo pipefail\n                                # The builder",
            "set -euxo pipefail\n                                # The builder",
        ),
        "set -x",
    ),
    "a traced credentials script": (
        (
            (
                "'''#!/bin/bash\n                                set -euo pipefail\n"
                "                                # The builder"
            ),
            (
                "'''\n                                set -euo pipefail\n"
                "                                # The builder"
            ),
        ),
        "runs with `sh -xe`",
    ),
    "pull requests running stages": (("not { changeRequest() }", ""), "skipped for pull requests"),
    "a credential of the wrong kind": (
        (
            (
                "usernamePassword(credentialsId: 'kaggle-api', usernameVariable: 'KAGGLE_USERNAME', "
                "passwordVariable: 'BRANCHOPS_CRED_KAGGLE_API')"
            ),
            "string(credentialsId: 'kaggle-api', variable: 'BRANCHOPS_CRED_KAGGLE_API')",
        ),
        "'kaggle-api' (kaggle) is bound as string, expected usernamePassword",
    ),
    "a credential bound to the wrong variable": (
        ("variable: 'BRANCHOPS_CRED_KUBEFLOW_TOKEN'", "variable: 'KF_TOKEN'"),
        "must be bound to BRANCHOPS_CRED_KUBEFLOW_TOKEN",
    ),
    "an extra credential": (
        (
            "string(credentialsId: 'kubeflow-token'",
            (
                "string(credentialsId: 'prod-db', variable: 'X'),\n"
                "                            string(credentialsId: 'kubeflow-token'"
            ),
        ),
        "binds 'prod-db', which ci.jenkins.credentials does not name",
    ),
    "a too short timeout": (
        ("timeout(time: 6, unit: 'HOURS')", "timeout(time: 45, unit: 'MINUTES')"),
        "timeout 2700s is shorter than the training stage may take",
    ),
    "no records archived": (
        ("artifacts: 'reports/**'", "artifacts: 'reports/junit/**'"),
        "this build's reports/records",
    ),
    "the checkout's records archived": (
        ("artifacts: 'reports/**'", "artifacts: 'records/**, reports/**'"),
        "archives records/**, the records of the commit checked out",
    ),
    "no failure notification": (("        failure {", "        unstable {"), "`failure` is missing"),
}


@pytest.mark.parametrize("name", sorted(DRIFTS))
def test_a_drifted_jenkinsfile_is_caught(name: str) -> None:
    (old, new), expected = DRIFTS[name]
    assert old in JENKINSFILE, f"the drift case '{name}' no longer applies to the Jenkinsfile"
    problems = check_jenkinsfile(production_config(), REPO_ROOT, JENKINSFILE.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


def test_groovy_interpolation_of_secrets_is_caught() -> None:
    start = JENKINSFILE.index(
        "sh '''#!/bin/bash\n                                set -euo pipefail\n"
        "                                # The builder"
    )
    end = JENKINSFILE.index("'''", start + 10)
    drifted = JENKINSFILE[:start] + 'sh """' + JENKINSFILE[start + 6 : end] + '"""' + JENKINSFILE[end + 3 :]
    problems = check_jenkinsfile(production_config(), REPO_ROOT, drifted)
    assert any("double-quoted sh string inside withCredentials" in p for p in problems), problems


def test_config_drift_is_caught() -> None:
    renamed = production_config(
        ci={
            "jenkins": {
                "credentials": {
                    "github": "github-token",
                    "kaggle": "kaggle-api",
                    "registry": "registry-push",
                    "kubeconfig": "kubeconfig",
                    "kubeflow": "kfp-token",
                }
            }
        }
    )
    problems = check_jenkinsfile(renamed, REPO_ROOT)
    assert any("ci.jenkins.credentials.kubeflow = 'kfp-token' is not bound" in p for p in problems)
    assert any("binds 'kubeflow-token'" in p for p in problems)

    unbound = production_config(
        notifications=[{"kind": "webhook", "url": {"credential": "slack-hook"}}],
        data={"kaggle": {"username": {"env": "KAGGLE_USER"}}},
    )
    problems = check_jenkinsfile(unbound, REPO_ROOT)
    assert any(p.startswith("notifications[0].url: {credential: slack-hook} is not bound") for p in problems)
    assert any(p.startswith("data.kaggle.username: {env: KAGGLE_USER} is not set") for p in problems)
    # References only the admin's machine resolves are not a build's business.
    assert not any(p.startswith("ci.jenkins.") for p in problems)

    local_records = production_config(git={"remote": None})
    problems = check_jenkinsfile(local_records, REPO_ROOT)
    assert any(p.startswith("git.remote is None: under Jenkins it must be 'origin'") for p in problems)

    long_training = production_config(training={"timeout_s": 4 * 3600, "max_parallel_runs": 1})
    assert any("shorter than the training stage" in p for p in check_jenkinsfile(long_training, REPO_ROOT))


def test_unparsable_groovy_is_reported_with_a_line() -> None:
    with pytest.raises(ConfigError, match=r"Jenkinsfile:3: newline in a single-line string"):
        parse_groovy_blocks("pipeline {\n  stages {\n    sh 'oops\n  }\n}\n")
    with pytest.raises(ConfigError, match=r"Jenkinsfile:3: unterminated string"):
        parse_groovy_blocks("pipeline {\n  stages {\n    sh '''oops\n  }\n}\n")
    with pytest.raises(ConfigError, match="unbalanced"):
        parse_groovy_blocks("pipeline {\n  stages {\n}\n")
    with pytest.raises(ConfigError, match="no declarative `pipeline"):
        read_jenkinsfile("node { sh 'make' }\n")


# -- jenkins/ ---------------------------------------------------------------------------------------


def test_the_agent_pod_is_a_valid_pod_with_one_privileged_builder() -> None:
    import kubernetes_validate

    pod = yaml.safe_load((REPO_ROOT / "jenkins" / "agent-pod.yaml").read_text())
    # The Kubernetes plugin names the pod; the schema wants a name to validate the rest.
    kubernetes_validate.validate(
        {**pod, "metadata": {**pod["metadata"], "name": "agent"}}, "1.30.0", strict=True
    )
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "branchops-ci"
    containers = {c["name"]: c for c in spec["containers"]}
    assert set(containers) == {"python", "builder"}
    assert containers["python"]["image"] == containers["builder"]["image"], "the venv must work in both"
    privileged = [n for n, c in containers.items() if (c.get("securityContext") or {}).get("privileged")]
    assert privileged == ["builder"]
    assert "container(runsBuild ? 'builder' : 'python')" in JENKINSFILE


def test_casc_declares_every_credential_with_the_kind_the_jenkinsfile_binds() -> None:
    casc = yaml.safe_load((REPO_ROOT / "jenkins" / "casc.yaml").read_text())
    declared: dict[str, str] = {}
    for domain in casc["credentials"]["system"]["domainCredentials"]:
        for entry in domain["credentials"]:
            ((kind, body),) = entry.items()
            declared[body["id"]] = kind
    for key, cred_id in credential_ids(production_config()).items():
        assert declared.get(cred_id) == CREDENTIAL_KINDS[key], (key, cred_id)
    hook = casc["unclassified"]["gitHubPluginConfig"]["hookSecretConfigs"][0]["credentialsId"]
    assert declared.get(hook) == "string"
    text = (REPO_ROOT / "jenkins" / "casc.yaml").read_text()
    for line in text.splitlines():
        if any(k in line for k in ("password:", "secret:", "secretBytes:")):
            assert "${" in line, f"a literal secret in casc.yaml: {line.strip()}"


def test_git_askpass_hands_git_the_bound_token(tmp_path: Path) -> None:
    helper = REPO_ROOT / "jenkins" / "git-askpass.sh"
    assert os.access(helper, os.X_OK)
    env = {"PATH": os.environ["PATH"], "GITHUB_TOKEN": "tok-123", "GITHUB_USER": "bot"}

    def run(prompt: str, e: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(helper), prompt], env=e, check=False, capture_output=True, text=True)

    assert run("Username for 'https://github.com': ", env).stdout == "bot\n"
    assert run("Password for 'https://bot@github.com': ", env).stdout == "tok-123\n"
    no_user = {k: v for k, v in env.items() if k != "GITHUB_USER"}
    assert run("Username for 'https://github.com': ", no_user).stdout == "x-access-token\n"
    missing = run("Password for 'https://github.com': ", {"PATH": os.environ["PATH"]})
    assert missing.returncode != 0 and "GITHUB_TOKEN is not bound" in missing.stderr


# -- Groovy's quote styles --------------------------------------------------------------------------

# The same String in each way Groovy writes one: a double-quoted string without `$` is a plain String,
# triple quotes only allow newlines, and escapes (\uXXXX, \$) are resolved before the step sees the value.
GITHUB_TOKEN_SPELLINGS = {
    "double quotes": '"github-token"',
    "triple single quotes": "'''github-token'''",
    "triple double quotes": '"""github-token"""',
    "a unicode escape": "'github\\u002dtoken'",
    "an escape in double quotes": '"github\\u002dtoken"',
}


@pytest.mark.parametrize("name", sorted(GITHUB_TOKEN_SPELLINGS))
def test_a_credential_id_reads_the_same_in_every_quote_style(name: str) -> None:
    spelled = JENKINSFILE.replace(
        "credentialsId: 'github-token'", f"credentialsId: {GITHUB_TOKEN_SPELLINGS[name]}"
    )
    assert spelled != JENKINSFILE
    assert read_jenkinsfile(spelled) == read_jenkinsfile(JENKINSFILE)
    assert check_jenkinsfile(production_config(), REPO_ROOT, spelled) == []


def _double_quoted(text: str) -> str:
    """The Jenkinsfile with every single-quoted step argument written in double quotes (scripts unchanged)."""
    text = re.sub(r"(\b\w+\s*:\s*)'(?!'')([^'\\\n$\"]*)'", r'\1"\2"', text)
    return re.sub(r"\b(yamlFile|defaultContainer|stage\()(\s*)'([^'\n]*)'", r'\1\2"\3"', text)


def test_the_whole_jenkinsfile_in_double_quotes_reads_the_same(tmp_path: Path) -> None:
    spelled = _double_quoted(JENKINSFILE)
    assert 'credentialsId: "kubeconfig"' in spelled and "yamlFile \"jenkins/agent-pod.yaml\"" in spelled
    assert "unit: \"HOURS\"" in spelled and 'artifacts: "' in spelled
    assert read_jenkinsfile(spelled) == read_jenkinsfile(JENKINSFILE)
    assert check_jenkinsfile(production_config(), REPO_ROOT, spelled) == []
    # and it is Groovy: every spelling above parses (one groovy start for all of them)
    files = [tmp_path / "Jenkinsfile"]
    files[0].write_text(spelled)
    for name, literal in GITHUB_TOKEN_SPELLINGS.items():
        path = tmp_path / f"Jenkinsfile-{name.replace(' ', '-')}"
        path.write_text(JENKINSFILE.replace("credentialsId: 'github-token'", f"credentialsId: {literal}"))
        files.append(path)
    result = subprocess.run(
        ["groovy", str(GROOVY_CHECK), *map(str, files)],
        check=False,
        capture_output=True,
        text=True,
        env=groovy_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def test_an_interpolated_credential_id_is_not_taken_for_a_literal() -> None:
    """A GString with `${...}` is known only when the build runs: the checker says so instead of guessing."""
    spelled = JENKINSFILE.replace("credentialsId: 'github-token'", 'credentialsId: "${env.GITHUB_CRED}"')
    problems = check_jenkinsfile(production_config(), REPO_ROOT, spelled)
    assert any("github" in p and "is not bound" in p for p in problems), problems
    assert any('"${env.GITHUB_CRED}"' in p and "interpolat" in p for p in problems), problems
    # an escaped dollar is no interpolation: Groovy reads the literal character
    escaped = JENKINSFILE.replace(
        "variable: 'BRANCHOPS_CRED_KUBEFLOW_TOKEN'", 'variable: "BRANCHOPS_CRED_KUBEFLOW_TOKEN\\$"'
    )
    problems = check_jenkinsfile(production_config(), REPO_ROOT, escaped)
    assert any("not BRANCHOPS_CRED_KUBEFLOW_TOKEN$" in p for p in problems), problems


# -- the bot-commit check agrees with the gate ------------------------------------------------------


def test_the_bot_commit_check_agrees_with_the_gate(tmp_path) -> None:
    """The first stage's git check and gate.is_own_commit tell branchops' own commits apart alike."""
    import git as gitpython

    from branchops.gate import is_own_commit
    from tests.conftest import git

    (check,) = re.findall(
        r"stage\('Bot commit'\).*?sh\(returnStatus: true, script: '''(.*?)'''\)", JENKINSFILE, re.S
    )
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "src").mkdir()
    (repo / "src" / "model.py").write_text("VERSION = 1\nprint('a line long enough to be renamed')\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    bot = "\n\nBranchops-Bot: true\n"

    def commit(message: str, *changes: tuple[str, str | None]) -> str:
        for path, content in changes:
            if content is None:
                (repo / "records").mkdir(exist_ok=True)
                git(repo, "mv", path, "records/moved.py")
            else:
                (repo / path).parent.mkdir(parents=True, exist_ok=True)
                (repo / path).write_text(content)
                git(repo, "add", path)
        git(repo, "commit", "-q", "--allow-empty", "-m", message)
        return git(repo, "rev-parse", "HEAD")

    cases = {
        commit("record" + bot, ("records/training/r1/record.json", "{}")): True,
        commit("code owners" + bot, (".github/CODEOWNERS", "* @lead\n")): True,
        commit("nothing" + bot): True,
        commit("record, no trailer", ("records/training/r2/record.json", "{}")): False,
        commit(
            "release" + bot, ("records/training/r3/record.json", "{}"), ("src/model.py", "VERSION = 2\n")
        ): False,
        commit("moved" + bot, ("src/model.py", None)): False,
    }
    for sha, own in cases.items():
        jenkins = subprocess.run(
            ["bash", "-c", check], cwd=repo, env={**os.environ, "GIT_COMMIT": sha}, capture_output=True
        )
        assert jenkins.returncode in (0, 1), jenkins.stderr
        message = git(repo, "log", "-1", "--format=%s", sha)
        gate_says = is_own_commit(gitpython.Repo(repo), sha, "Branchops-Bot")
        assert (gate_says, jenkins.returncode == 0) == (own, own), message
