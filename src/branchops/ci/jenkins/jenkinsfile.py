"""The Jenkinsfile's contract with config: every way the shipped Jenkinsfile drifts from it.

The Jenkinsfile names its credential ids literally, so a reviewer sees which secrets a build can reach.
:func:`read_jenkinsfile` reads its declarative structure (not a Groovy parser: Debian's groovy checks
the syntax in CI) and :func:`check_jenkinsfile` lists every drift: credentials bound under other ids,
kinds or variables, secret references no binding provides, a missing gate for pull requests, a run of
another commit than the one checked out, record commits that would build in full, archives of the
checkout's old records instead of the build's own, a timeout shorter than training, tracing that would
print secrets. ``sync`` and ``bootstrap`` refuse a drifted file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from branchops.errors import ConfigError
from branchops.secrets import credential_env_name

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig

JENKINSFILE = Path("Jenkinsfile")

# How the Jenkinsfile binds each logical credential of `ci.jenkins.credentials`: the kind of Jenkins
# credential it must be, since a binding of the wrong kind fails only at build time.
CREDENTIAL_KINDS = {
    "github": "usernamePassword",  # a token as password, or a GitHub App credential
    "kaggle": "usernamePassword",  # Kaggle username and API key
    "registry": "usernamePassword",
    "kubeconfig": "file",
    "kubeflow": "string",
}
# Only the admin's machine uses these references (sync, bootstrap); a build never resolves them.
_NOT_USED_IN_BUILDS = ("ci.jenkins.",)

TIME_UNITS = {"SECONDS": 1, "MINUTES": 60, "HOURS": 3600, "DAYS": 86400}

# Where the stage step puts the records its run pushed (they never reach the workspace's records/, which
# holds the checked-out commit's), for archiveArtifacts.
BUILD_RECORDS = "reports/records"
# The remote a Jenkins checkout names: records are pushed there, and the stage step reads them back from it.
JENKINS_REMOTE = "origin"
# What the first stage sets, and every later stage's `when` reads: "true" for branchops' own commit.
BOT_COMMIT_VARIABLE = "BRANCHOPS_BOT_COMMIT"


def default_credentials() -> dict[str, str]:
    from branchops.config import JenkinsSettings

    return dict(JenkinsSettings.model_fields["credentials"].default_factory())  # type: ignore[misc]


def credential_ids(config: BranchopsConfig) -> dict[str, str]:
    """The Jenkins credential ids config names (the schema's defaults when there is no Jenkins section)."""
    return dict(config.ci.jenkins.credentials) if config.ci.jenkins else default_credentials()


# A Groovy string literal in each quote style it has; triple quotes first, as they start like the others.
STRING = "(?:{})".format(
    "|".join(
        (r"'''(?:[^\\]|\\.)*?'''", r'"""(?:[^\\]|\\.)*?"""', r"'(?:[^'\\\n]|\\.)*'", r'"(?:[^"\\\n]|\\.)*"')
    )
)
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", "s": " ", "\n": ""}


def string_value(literal: str) -> str | None:
    """The value Groovy gives a string literal, whatever its quotes; None for a GString that interpolates
    (`"${...}"`, `"$name"`): its value exists only when the build runs."""
    quote = literal[:3] if literal[:3] in ("'''", '"""') else literal[:1]
    body = literal[len(quote) : -len(quote)]
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6]):
                out.append(chr(int(body[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))  # \\ \' \" \$ stand for the character itself
            i += 2
            continue
        if c == "$" and quote.startswith('"'):
            return None
        out.append(c)
        i += 1
    return "".join(out)


@dataclass
class Block:
    """A ``header { ... }`` of a Groovy/declarative file: statements and nested blocks, in order."""

    header: str
    items: list[Block | str] = field(default_factory=list)

    @property
    def name(self) -> str:
        match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", self.header)
        return match.group(0) if match else ""

    @property
    def argument(self) -> str | None:
        match = re.match(rf"[A-Za-z_]\w*\s*\(\s*({STRING})", self.header)
        return string_value(match.group(1)) if match else None

    def blocks(self, name: str | None = None) -> list[Block]:
        return [b for b in self.items if isinstance(b, Block) and (name is None or b.name == name)]

    def block(self, name: str) -> Block | None:
        found = self.blocks(name)
        return found[0] if found else None

    def statements(self) -> list[str]:
        return [s for s in self.items if isinstance(s, str)]

    def walk(self) -> Iterator[Block]:
        yield self
        for child in self.blocks():
            yield from child.walk()

    def text(self) -> str:
        """Everything inside, headers and statements, as one string (for searching)."""
        parts = [self.header]
        for item in self.items:
            parts.append(item.text() if isinstance(item, Block) else item)
        return "\n".join(parts)


def parse_groovy_blocks(text: str, source: str = "Jenkinsfile") -> Block:
    """Split Groovy source into nested blocks and statements; strings and comments are respected.

    Not a Groovy parser (Debian's groovy checks the syntax in CI): enough structure to read a
    declarative pipeline's sections and steps.
    """
    root = Block("<file>")
    stack = [root]
    buf: list[str] = []
    depth = 0  # () and [] nesting: newlines and braces inside them belong to the statement
    i, n, line = 0, len(text), 1

    def flush() -> None:
        text_ = "".join(buf)
        # One-line statements are normalised; multi-line ones (scripts) keep their layout.
        statement = " ".join(text_.split()) if "\n" not in text_ else text_.strip()
        if statement:
            stack[-1].items.append(statement)
        buf.clear()

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ConfigError(f"{source}:{line}: unterminated /* comment")
            line += text.count("\n", i, j)
            i = j + 2
            continue
        if c in "'\"":
            quote = text[i : i + 3] if text[i : i + 3] in ("'''", '"""') else c
            j = i + len(quote)
            while True:
                if j >= n:
                    raise ConfigError(f"{source}:{line}: unterminated string")
                if text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(quote, j):
                    j += len(quote)
                    break
                if len(quote) == 1 and text[j] == "\n":
                    raise ConfigError(f"{source}:{line}: newline in a single-line string")
                j += 1
            buf.append(text[i:j])
            line += text.count("\n", i, j)
            i = j
            continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"{source}:{line}: unbalanced '{c}'")
        if depth == 0 and c == "{":
            header = " ".join("".join(buf).split())
            buf.clear()
            block = Block(header)
            stack[-1].items.append(block)
            stack.append(block)
        elif depth == 0 and c == "}":
            flush()
            if len(stack) == 1:
                raise ConfigError(f"{source}:{line}: unbalanced '}}'")
            stack.pop()
        elif depth == 0 and c in "\n;":
            flush()
        else:
            buf.append(c)
        if c == "\n":
            line += 1
        i += 1
    flush()
    if len(stack) != 1 or depth != 0:
        raise ConfigError(f"{source}: unbalanced braces or brackets at the end of the file")
    return root


@dataclass(frozen=True)
class CredentialBinding:
    kind: str  # usernamePassword, string, file, sshUserPrivateKey
    credentials_id: str
    variables: dict[str, str]  # role (variable, usernameVariable, passwordVariable) -> env name

    @property
    def secret_variable(self) -> str | None:
        return (
            self.variables.get("passwordVariable")
            or self.variables.get("variable")
            or self.variables.get("keyFileVariable")
        )


@dataclass
class JenkinsfileModel:
    """What the checks need from a declarative Jenkinsfile."""

    agent_yaml_file: str | None
    options: list[str]
    timeout_s: int | None
    stages: list[str]
    bindings: list[CredentialBinding]
    exported: dict[str, str]  # NAME -> the bound variable it copies (inside the credentials block)
    run_commands: list[str]  # sh scripts that call `branchops run`
    run_stage_guarded: bool  # the stage that runs branchops sits behind `when { not { changeRequest() } }`
    run_inside_credentials: bool
    post_conditions: list[str]
    junit_patterns: list[str]
    junitxml_paths: list[str]
    archived: list[str]
    groovy_interpolated_secrets: list[str]  # double-quoted sh strings inside a credentials block
    interpolated_arguments: list[str]  # step arguments whose value only the build knows (`"${...}"`)
    bot_marker: str | None  # the trailer the first stage's git check looks for
    bot_guarded: list[str]  # stages whose `when` skips them for branchops' own commits
    traced_scripts: list[str]  # sh scripts inside a credentials block that Jenkins runs with `sh -xe`
    uses_set_x: bool


_BINDING = re.compile(r"\b(usernamePassword|string|file|sshUserPrivateKey)\s*\(([^()]*)\)")
_NAMED = re.compile(rf"(\w+)\s*:\s*({STRING})")


def read_jenkinsfile(text: str, source: str = "Jenkinsfile") -> JenkinsfileModel:
    root = parse_groovy_blocks(text, source)
    pipeline = root.block("pipeline")
    if pipeline is None:
        raise ConfigError(f"{source}: no declarative `pipeline {{ ... }}` block")
    agent_text = pipeline.block("agent").text() if pipeline.block("agent") else ""
    yaml_file = re.search(rf"yamlFile\s*\(?\s*({STRING})", agent_text)
    options_block = pipeline.block("options")
    options = options_block.statements() if options_block else []
    timeout = None
    for option in options:
        m = re.match(rf"timeout\s*\(\s*time\s*:\s*(\d+)\s*,\s*unit\s*:\s*({STRING})", option)
        if m and string_value(m.group(2)) in TIME_UNITS:
            timeout = int(m.group(1)) * TIME_UNITS[string_value(m.group(2))]
        elif re.match(r"timeout\s*\(\s*(\d+)\s*\)", option):  # minutes by default
            timeout = int(re.match(r"timeout\s*\(\s*(\d+)", option).group(1)) * 60
    stages_block = pipeline.block("stages")
    stages = [b for b in stages_block.blocks("stage")] if stages_block else []

    bindings: list[CredentialBinding] = []
    exported: dict[str, str] = {}
    run_commands: list[str] = []
    interpolated: list[str] = []
    traced: list[str] = []
    not_literal: list[str] = []
    run_inside = False
    for block in pipeline.walk():
        if block.name != "withCredentials":
            continue
        for kind, args in _BINDING.findall(block.header):
            named: dict[str, str] = {}
            for key, literal in _NAMED.findall(args):
                value = string_value(literal)
                if value is None:
                    not_literal.append(f"{key}: {literal}")
                named[key] = literal if value is None else value
            cred_id = named.pop("credentialsId", "")
            bindings.append(CredentialBinding(kind, cred_id, named))
        inner = block.text()[len(block.header) :]
        exported.update(dict(re.findall(r'export\s+([A-Za-z_]\w*)="\$\{?([A-Za-z_]\w*)\}?"', inner)))
        for statement in [s for b in block.walk() for s in b.statements()]:
            if re.match(r'sh\s*\(?\s*(script\s*:\s*)?"', statement):
                interpolated.append(statement.splitlines()[0])
            # Jenkins runs an sh script with `-xe` (tracing every command, values expanded) unless
            # the script starts with its own #! line.
            script = re.match(r"sh\s*\(?\s*(?:script\s*:\s*)?('''|'|\"\"\"|\")", statement)
            if script and not statement[script.end() :].startswith("#!"):
                traced.append(statement.splitlines()[0])
            if "branchops run" in statement:
                run_inside = True
    guarded = False
    bot_marker = None
    if stages:
        marker = re.search(r"grep\b[^\n]*?([A-Za-z][A-Za-z0-9-]*): true", stages[0].text())
        bot_marker = marker.group(1) if marker else None
    bot_guarded = []
    for stage in stages:
        when = stage.block("when")
        conditions = when.text() if when else ""
        for name, value in re.findall(
            rf"environment\s*\(?\s*name\s*:\s*({STRING})\s*,\s*value\s*:\s*({STRING})", conditions
        ):
            if string_value(name) == BOT_COMMIT_VARIABLE and string_value(value) == "false":
                bot_guarded.append(stage.argument or "")
        text_of_stage = stage.text()
        if "branchops run" in text_of_stage:
            run_commands += [line.strip() for line in text_of_stage.splitlines() if "branchops run" in line]
            when = stage.block("when")
            guarded = guarded or bool(when and "changeRequest" in when.text() and "not" in when.text())
    post = pipeline.block("post")
    post_conditions = [b.name for b in post.blocks()] if post else []
    everything = pipeline.text()
    return JenkinsfileModel(
        agent_yaml_file=string_value(yaml_file.group(1)) if yaml_file else None,
        options=[re.match(r"\w*", o).group(0) for o in options],
        timeout_s=timeout,
        stages=[s.argument or "" for s in stages],
        bindings=bindings,
        exported=exported,
        run_commands=run_commands,
        run_stage_guarded=guarded,
        run_inside_credentials=run_inside,
        post_conditions=post_conditions,
        junit_patterns=[
            string_value(p) or p
            for p in re.findall(rf"junit\b[^\n]*testResults\s*:\s*({STRING})", everything)
        ],
        junitxml_paths=re.findall(r"--junitxml[= ]([^\s'\"]+)", everything),
        archived=[
            p.strip()
            for a in re.findall(rf"archiveArtifacts\b[^\n]*artifacts\s*:\s*({STRING})", everything)
            for p in (string_value(a) or a).split(",")
        ],
        groovy_interpolated_secrets=interpolated,
        interpolated_arguments=not_literal,
        bot_marker=bot_marker,
        bot_guarded=bot_guarded,
        traced_scripts=traced,
        uses_set_x=bool(re.search(r"set\s+-[a-wyzA-Z]*x|set\s+-o\s+xtrace", everything)),
    )


def _secret_refs(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    from pydantic import BaseModel

    from branchops.config import SecretRef

    if isinstance(value, SecretRef):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_refs(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_refs(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_refs(item, f"{path}[{index}]")


def required_run_command() -> str:
    # --commit: exactly the commit Jenkins checked out; by the time a queued build starts, the branch tip
    # may be the record commit of the run before it, above the merge this build is for
    return 'branchops run --for-branch "$BRANCH_NAME" --commit "$GIT_COMMIT"'


def check_jenkinsfile(
    config: BranchopsConfig, repo_root: str | Path = ".", text: str | None = None
) -> list[str]:
    """Every way the Jenkinsfile drifts from config or from the stage contract (empty: in step)."""
    path = Path(repo_root) / JENKINSFILE
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return [f"{path}: missing (it ships with the branchops layout)"]
    model = read_jenkinsfile(text, str(path))
    problems: list[str] = []

    if model.agent_yaml_file is None:
        problems.append("agent: expected `kubernetes { yamlFile 'jenkins/agent-pod.yaml' }`")
    elif not (Path(repo_root) / model.agent_yaml_file).is_file():
        problems.append(f"agent: yamlFile '{model.agent_yaml_file}' does not exist")
    for option in ("disableConcurrentBuilds", "timeout", "buildDiscarder", "timestamps"):
        if option not in model.options:
            problems.append(f"options: `{option}` is missing")
    training = config.training
    rounds = -(-len(training.experiments) // training.max_parallel_runs)
    needed = int(training.timeout_s * rounds + 1800)
    if model.timeout_s is not None and model.timeout_s < needed:
        problems.append(
            f"options: timeout {model.timeout_s}s is shorter than the training stage may take "
            f"({rounds} round(s) of training.timeout_s={training.timeout_s:g}s plus 30 min); Jenkins "
            "would kill the run before branchops can record its outcome"
        )

    runs = [c for c in model.run_commands if required_run_command() in c]
    if not runs:
        problems.append(
            f"stages: no step runs `{required_run_command()}` (the branch -> stage map lives in config)"
        )
    if len(model.run_commands) != len(runs) or len(runs) > 1:
        problems.append(
            "stages: `branchops run` must be called exactly once, as "
            f"`{required_run_command()}`; found: {model.run_commands}"
        )
    if runs and not model.run_inside_credentials:
        problems.append("stages: `branchops run` is not inside the withCredentials block")
    if runs and not model.run_stage_guarded:
        problems.append(
            "stages: the stage running branchops must be skipped for pull requests "
            "(`when { not { changeRequest() } }`)"
        )

    wanted = credential_ids(config)
    bound = {b.credentials_id: b for b in model.bindings}
    for key, cred_id in wanted.items():
        binding = bound.get(cred_id)
        if binding is None:
            problems.append(
                f"credentials: ci.jenkins.credentials.{key} = '{cred_id}' is not bound by withCredentials"
            )
            continue
        kind = CREDENTIAL_KINDS.get(key)
        if kind and binding.kind != kind:
            problems.append(f"credentials: '{cred_id}' ({key}) is bound as {binding.kind}, expected {kind}")
        if binding.secret_variable != credential_env_name(cred_id):
            problems.append(
                f"credentials: '{cred_id}' must be bound to {credential_env_name(cred_id)} "
                f"(branchops reads {{credential: {cred_id}}} there), not {binding.secret_variable}"
            )
    for argument in model.interpolated_arguments:
        problems.append(
            f"credentials: {argument} is an interpolated Groovy string, known only when the build "
            "runs; name credential ids and variables literally, so that a reviewer sees which secrets a "
            "build can reach"
        )
    not_literal = {argument.split(": ", 1)[1] for argument in model.interpolated_arguments}
    for cred_id in sorted(set(bound) - set(wanted.values()) - not_literal):
        problems.append(
            f"credentials: the Jenkinsfile binds '{cred_id}', which ci.jenkins.credentials does not name"
        )

    available = {v for b in model.bindings for v in b.variables.values()} | set(model.exported)
    for where, ref in _secret_refs(config):
        if where.startswith(_NOT_USED_IN_BUILDS):
            continue
        if ref.credential and ref.credential not in bound:
            problems.append(
                f"{where}: {{credential: {ref.credential}}} is not bound in the Jenkinsfile; add it to "
                "ci.jenkins.credentials and to withCredentials"
            )
        elif ref.env and ref.env not in available:
            problems.append(
                f"{where}: {{env: {ref.env}}} is not set by the Jenkinsfile's withCredentials block"
            )

    for condition in ("always", "success", "failure"):
        if condition not in model.post_conditions:
            problems.append(f"post: `{condition}` is missing")
    if not model.junit_patterns:
        problems.append("post: no `junit` step publishes the test results")
    for report in model.junitxml_paths:
        if not any(fnmatch(report, pattern) for pattern in model.junit_patterns):
            problems.append(f"post: junit does not pick up {report}")
    for name in ("record.json", "run.log"):
        if not any(fnmatch(f"{BUILD_RECORDS}/stage/run-id/{name}", p) for p in model.archived):
            problems.append(f"post: archiveArtifacts does not archive this build's {BUILD_RECORDS}/**")
    if any(fnmatch("records/stage/run-id/record.json", p) for p in model.archived):
        problems.append(
            "post: archiveArtifacts archives records/**, the records of the commit checked out (every "
            f"earlier run's), not this build's ({BUILD_RECORDS})"
        )
    if config.ci.backend == "jenkins" and config.git.remote != JENKINS_REMOTE:
        problems.append(
            f"git.remote is {config.git.remote!r}: under Jenkins it must be '{JENKINS_REMOTE}', the remote "
            "the build's checkout names; a workspace is thrown away after the build, so records that are "
            "not pushed there are lost"
        )
    if model.bot_marker is None:
        problems.append(
            "stages: the first stage must stop a build of branchops' own record commit before set-up "
            f"(git: the commit's `{config.bot.marker}: true` trailer) and set {BOT_COMMIT_VARIABLE}"
        )
    elif model.bot_marker != config.bot.marker:
        problems.append(
            f"stages: the first stage looks for the trailer '{model.bot_marker}', but bot.marker is "
            f"'{config.bot.marker}': record commits would build in full"
        )
    unguarded = [name for name in model.stages[1:] if name not in model.bot_guarded]
    if unguarded:
        problems.append(
            f"stages: {', '.join(unguarded)} must be skipped for branchops' own commits "
            f"(`when {{ environment name: '{BOT_COMMIT_VARIABLE}', value: 'false' }}`)"
        )
    if model.uses_set_x:
        problems.append("shell tracing (`set -x`) would print the bound secrets")
    for statement in model.traced_scripts:
        problems.append(
            "credentials: an sh script inside withCredentials without a #! line runs with "
            f"`sh -xe`, whose trace prints the secrets; start it with #!/bin/bash: {statement}"
        )
    for statement in model.groovy_interpolated_secrets:
        problems.append(
            f"credentials: a double-quoted sh string inside withCredentials lets Groovy interpolate "
            f"secrets; use single quotes: {statement}"
        )
    return problems
