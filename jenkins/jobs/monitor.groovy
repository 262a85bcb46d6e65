// branchops monitor, on a schedule: rendered by `branchops jenkins sync` from jenkins/jobs/monitor.yaml.
// (Braces are doubled because jenkins-job-builder fills the {{placeholders}} of this file.)
//
// Checks out the deploy-model branch (its records say which version serves and where the last check
// stopped), installs branchops as the stage builds do, and runs `branchops monitor --json` with the
// stage builds' credentials, bound exactly as the Jenkinsfile binds them: the forge token opens or
// updates the retraining merge request and pushes the monitor record, the kubeconfig (or the agent's
// service account) reads the prediction log off its volume. Values are masked by Jenkins and never
// echoed: no shell tracing, every sh script starts with its own #! line, Groovy interpolates none.
pipeline {{
    agent {{
        kubernetes {{
            // jenkins/agent-pod.yaml without the privileged image builder, which monitoring never needs.
            yaml '''{agent_pod}'''
            defaultContainer 'python'
        }}
    }}

    options {{
        timeout(time: 1, unit: 'HOURS')
        timestamps()
    }}

    environment {{
        PYTHONUNBUFFERED = '1'
        PIP_DISABLE_PIP_VERSION_CHECK = '1'
        GIT_TERMINAL_PROMPT = '0'
        DEPLOY_BRANCH = '{deploy_branch}'
    }}

    stages {{
        stage('Checkout') {{
            steps {{
                // The remote is `origin`, as in the stage builds (git.remote): the record is pushed there.
                checkout scmGit(
                    branches: [[name: 'refs/heads/{deploy_branch}']],
                    userRemoteConfigs: [[name: 'origin', url: '{repository_url}', credentialsId: '{github_credentials_id}']]
                )
            }}
        }}

        stage('Set up') {{
            steps {{
                sh '''#!/bin/bash
                    set -euo pipefail
                    python3 -m venv .venv
                    .venv/bin/pip install --quiet --upgrade pip
                    .venv/bin/pip install --quiet -c constraints.txt -e '.[all]'
                    .venv/bin/branchops --version
                    .venv/bin/branchops config validate --offline
                '''
            }}
        }}

        stage('Monitor') {{
            steps {{
                withCredentials([
{credential_bindings}
                ]) {{
                    sh '''#!/bin/bash
                        set -euo pipefail
                        # The names libraries and {{env: ...}} references expect, same values.
{credential_exports}
                        export GIT_ASKPASS="$WORKSPACE/jenkins/git-askpass.sh"
                        before=$(git rev-parse --verify --quiet "refs/remotes/origin/$DEPLOY_BRANCH^{{commit}}" || git rev-parse HEAD)
                        mkdir -p reports/monitor reports/records
                        # One JSON document on stdout (the check's result), progress on stderr (the console).
                        status=0
                        .venv/bin/branchops monitor --json > reports/monitor/monitor.json || status=$?
                        # The record this check pushed to deploy-model (records/monitor/<run-id>/, plots
                        # included), for archiveArtifacts: the checkout holds only the earlier ones.
                        after=$(git rev-parse --verify --quiet "refs/remotes/origin/$DEPLOY_BRANCH^{{commit}}" || echo "$before")
                        mapfile -d '' added < <(git diff -z --name-only --diff-filter=A "$before" "$after" -- records/)
                        if [ "${{#added[@]}}" -gt 0 ]; then
                            git archive --format=tar "$after" -- "${{added[@]}}" | tar -x -C reports/records --strip-components=1
                        fi
                        exit "$status"
                    '''
                }}
            }}
        }}
    }}

    post {{
        always {{
            // reports/monitor/monitor.json and reports/records/monitor/<run-id>/
            archiveArtifacts allowEmptyArchive: true, artifacts: 'reports/**'
        }}
    }}
}}
