#!/usr/bin/env bash
# System packages the test suite needs beyond Python, from Debian: OpenSSH's sshd (tests/e2e/test_remote.py
# serves an SSH DVC remote on 127.0.0.1), Chromium (tests/e2e/test_plots_browser.py renders
# `dvc plots show`) and Go (the tests build tools/gotemplate to render the Modelfile TEMPLATE with Go's own
# text/template, as Ollama does). Installs only what is missing; needs root (CI runs as root) or sudo.
set -euo pipefail

need=()
[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null || need+=(openssh-server)
{ command -v ssh-keygen && command -v sftp; } >/dev/null || need+=(openssh-client)
command -v chromium >/dev/null || need+=(chromium chromium-driver)
command -v go >/dev/null || need+=(golang-go)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "services: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
