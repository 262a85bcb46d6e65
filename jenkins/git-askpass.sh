#!/bin/sh
# GIT_ASKPASS helper for the Jenkinsfile: git calls it for the HTTPS username and password when it
# pushes branchops' records. The token comes from the bound GitHub credential and goes to git only.
# For a GitHub App installation token the username must be x-access-token; a PAT accepts any name.
case "$1" in
  Username*) printf '%s\n' "${GITHUB_USER:-x-access-token}" ;;
  *) printf '%s\n' "${GITHUB_TOKEN:?GITHUB_TOKEN is not bound}" ;;
esac
