"""Remote storage round trips, for real: `dvc push` from a clone holding the pipeline's results, then
`git clone` + `dvc pull` into a fresh clone, which must end up with byte-identical checkpoints and GGUFs
and a clean `dvc status`. Three remotes: a local directory (a NAS mount looks the same); SSH, served by
a real OpenSSH `sshd` on 127.0.0.1 with a throwaway host key and client key; and S3 through `dvc-s3`,
served by moto's S3 server on 127.0.0.1 (the same S3 API as AWS, MinIO, Alibaba Cloud OSS, Tencent COS)
with request signatures checked against an IAM user allowed on the one bucket.

The remote's URL goes into the committed `.dvc/config`; the SSH key path only into `.dvc/config.local`
(`dvc remote modify --local`), which each clone sets for itself, and the S3 keys only into the
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) — as docs/remotes.md tells users to.

sshd is a system package: `.ci/run` installs it (`apt-get install openssh-server`); moto and dvc-s3 come
from the requirements. Without them the tests fail, they do not skip.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml
from botocore.exceptions import ClientError

from tests.helpers import (
    BIN,
    DVC,
    REPO,
    assert_status_clean,
    clone_with_results,
    commit_all,
    free_port,
    ran_stages,
    repo_env,
    run,
)

# What a colleague needs after a pull: every checkpoint and both GGUFs.
MUST_ARRIVE = (
    "models/base/model.safetensors",
    "models/sft/adapter_model.safetensors",
    "models/dpo/adapter_model.safetensors",
    "models/merged/model.safetensors",
    "models/gguf/teachingassistant-f16.gguf",
    "models/gguf/teachingassistant-q4_k_m.gguf",
)
SECRET_WORDS = ("keyfile", "password", "passphrase", "secret", "access_key", "credential", "token")


def file_hashes(root: Path, under: str) -> dict[str, str]:
    """sha256 of every file under root/under (links followed), by path relative to root."""
    hashes = {}
    for path in sorted((root / under).rglob("*")):
        if path.is_file() and path.name != ".gitignore":
            hashes[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def assert_remote_in_sync(repo: Path, remote: str, env: dict[str, str] | None = None) -> None:
    out = run([DVC, "status", "--cloud", "--remote", remote], cwd=repo, env=env).stdout
    assert out.strip() == f"Cache and remote '{remote}' are in sync.", f"dvc status --cloud in {repo}:\n{out}"


@pytest.fixture(scope="module")
def results_clone(pipeline_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_with_results(pipeline_repo, tmp_path_factory.mktemp("results") / "repo")


def unpushed_outs(repo: Path) -> dict[str, str]:
    """Outputs dvc.yaml marks `push: false` (cheap to rebuild, e.g. merged weights) -> their stage."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {
        path: name
        for name, stage in stages.items()
        for out in stage.get("outs", [])
        if isinstance(out, dict)
        for path, flags in out.items()
        if (flags or {}).get("push") is False
    }


def assert_repro_runs_nothing(repo: Path, env: dict[str, str] | None = None) -> None:
    """`dvc repro` after the pull: every stage "didn't change, skipping", none runs."""
    stages = set(run([DVC, "stage", "list", "--name-only"], cwd=repo, env=env).stdout.split())
    result = run([DVC, "repro"], cwd=repo, env=env)
    output = result.stdout + result.stderr
    assert ran_stages(output) == [], f"dvc repro after the pull ran stages:\n{output}"
    skipped = set(re.findall(r"Stage '([^']+)' didn't change, skipping", output))
    assert skipped == stages, f"dvc repro did not skip {sorted(stages - skipped)}:\n{output}"


def round_trip(
    source: Path, remote: str, dest: Path, local_config: list[list[str]], env: dict[str, str] | None = None
) -> None:
    """Push from `source`, clone it to `dest`, apply the per-clone `--local` settings, pull, compare; every
    DVC command runs in `env` (the credentials of a remote that takes them from the environment).
    Outputs marked `push: false` are not on the remote: the colleague rebuilds them with `dvc repro`,
    which must give the same bytes and rerun nothing else."""
    run([DVC, "push", "-r", remote], cwd=source, env=env)
    assert_remote_in_sync(source, remote, env)
    run(["git", "clone", "-q", str(source), str(dest)], cwd=dest.parent)
    for args in local_config:
        run([DVC, *args], cwd=dest, env=env)
    assert not (dest / "models").exists(), "a fresh clone has no model files before the pull"
    rebuilt = unpushed_outs(dest)
    if rebuilt:
        run([DVC, "pull", "-r", remote, "--allow-missing"], cwd=dest, env=env)
        assert not any((dest / rel).exists() for rel in rebuilt), f"push: false outputs {rebuilt} were pulled"
        result = run([DVC, "repro"], cwd=dest, env=env)
        ran = set(ran_stages(result.stdout + result.stderr))
        assert ran == set(rebuilt.values()), f"rebuilding {sorted(rebuilt)} reran {sorted(ran)}"
    else:
        run([DVC, "pull", "-r", remote], cwd=dest, env=env)
    assert_repro_runs_nothing(dest, env)
    for rel in MUST_ARRIVE:
        assert (dest / rel).is_file(), f"{rel} did not arrive"
    assert file_hashes(dest, "models") == file_hashes(source, "models")
    assert file_hashes(dest, "data") == file_hashes(source, "data")
    assert_status_clean(dest)


def committed_config(repo: Path) -> str:
    return run(["git", "show", "HEAD:.dvc/config"], cwd=repo).stdout


def test_local_remote_round_trip(results_clone: Path, tmp_path: Path) -> None:
    store = tmp_path / "nas" / "teachingassistant"
    run([DVC, "remote", "add", "nas", str(store)], cwd=results_clone)
    commit_all(results_clone, "remote: nas")
    round_trip(results_clone, "nas", tmp_path / "colleague", local_config=[])
    assert sum(1 for p in store.rglob("*") if p.is_file()) >= len(MUST_ARRIVE)


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    key: Path


def wait_listening(server: subprocess.Popen, port: int, log: Path, timeout_s: float = 20) -> None:
    """Until `server` accepts connections on 127.0.0.1:port; fails with its log if it exits or never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            pytest.fail(f"{server.args[0]} exited ({server.returncode}):\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"{server.args[0]} did not listen on {port}:\n{log.read_text()}")
            time.sleep(0.2)


def sshd_binary() -> str:
    path = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(path):
        pytest.fail("sshd not found: `.ci/run` installs it (apt-get install -y openssh-server)")
    return os.path.abspath(path)  # sshd re-executes itself and refuses a relative path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """OpenSSH's sshd on 127.0.0.1, in the foreground, with its own config, host key and authorized key."""
    binary = sshd_binary()
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"ta-test-{name}", "-f", str(home / name)], cwd=home)
    shutil.copy(home / "client_key.pub", home / "authorized_keys")
    user, port = getpass.getuser(), free_port()
    config = home / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\nPidFile {home / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nAllowUsers {user}\nAuthenticationMethods publickey\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n",
        encoding="utf-8",
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir, normally made at boot
    log = (home / "sshd.log").open("w")
    server = subprocess.Popen([binary, "-D", "-e", "-p", str(port), "-f", str(config)], stdout=log, stderr=log)
    try:
        wait_listening(server, port, home / "sshd.log")
        yield SshServer("127.0.0.1", port, user, home / "client_key")
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def test_sshd_accepts_only_the_test_key(sshd: SshServer) -> None:
    """The server really authenticates: the throwaway key logs in over sftp, no key does not."""
    base = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    base += ["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-P", str(sshd.port), "-b", "-"]
    ok = subprocess.run(
        ["sftp", *base, "-i", str(sshd.key), f"{sshd.user}@{sshd.host}"],
        input="pwd\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    denied = subprocess.run(
        ["sftp", *base, "-o", "IdentityFile=/dev/null", f"{sshd.user}@{sshd.host}"],
        input="pwd\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode != 0


def test_ssh_remote_round_trip(results_clone: Path, sshd: SshServer, tmp_path: Path) -> None:
    store = tmp_path / "ssh-store"
    url = f"ssh://{sshd.host}:{sshd.port}{store}"
    run([DVC, "remote", "add", "box", url], cwd=results_clone)
    run([DVC, "remote", "modify", "box", "user", sshd.user], cwd=results_clone)
    run([DVC, "remote", "modify", "--local", "box", "keyfile", str(sshd.key)], cwd=results_clone)
    commit_all(results_clone, "remote: box (ssh)")
    config = committed_config(results_clone)
    assert url in config
    assert not any(word in config.lower() for word in SECRET_WORDS), f"secret in committed .dvc/config:\n{config}"
    assert str(sshd.key) not in config
    round_trip(
        results_clone,
        "box",
        tmp_path / "colleague",
        local_config=[["remote", "modify", "--local", "box", "keyfile", str(sshd.key)]],
    )
    assert any(p.is_file() for p in store.rglob("*")), "the SSH store holds the pushed objects"


BUCKET = "teachingassistant-dvc"
SETUP_KEYS = {"AWS_ACCESS_KEY_ID": "setup", "AWS_SECRET_ACCESS_KEY": "setup"}  # taken before auth is switched on


def aws_client(service: str, endpoint: str, keys: dict[str, str]) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
    )


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    keys: dict[str, str]  # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of the IAM user allowed on the bucket
    home: Path

    def env(self, keys: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a DVC command: `keys` (by default the bucket user's) and no other AWS setting,
        neither the developer's AWS_* variables nor ~/.aws."""
        env = {name: value for name, value in repo_env().items() if not name.startswith("AWS_")}
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(self.home / "no-credentials")
        env["AWS_CONFIG_FILE"] = str(self.home / "no-config")
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        env.update(self.keys if keys is None else keys)
        return env

    def client(self, keys: dict[str, str]) -> Any:
        return aws_client("s3", self.endpoint, keys)


def bucket_user_policy(bucket: str) -> str:
    arns = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": arns}]})


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 in its own process, with one bucket and one IAM user allowed on it.
    The bucket and the user are made while the server still takes any request; then `reset-auth 0` makes it
    check every request's signature against the user's keys and its policy, as AWS, OSS or COS do."""
    binary = BIN / "moto_server"
    if not binary.exists():
        pytest.fail(f"{binary} not found: install requirements-test.txt (moto[server])")
    home = tmp_path_factory.mktemp("s3")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (home / "moto.log").open("w")
    server = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    try:
        wait_listening(server, port, home / "moto.log")
        iam = aws_client("iam", endpoint, SETUP_KEYS)
        iam.create_user(UserName="dvc")
        iam.put_user_policy(UserName="dvc", PolicyName="bucket", PolicyDocument=bucket_user_policy(BUCKET))
        key = iam.create_access_key(UserName="dvc")["AccessKey"]
        aws_client("s3", endpoint, SETUP_KEYS).create_bucket(Bucket=BUCKET)
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        yield S3Server(endpoint, BUCKET, keys, home)
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def test_s3_server_accepts_only_the_bucket_users_keys(s3: S3Server) -> None:
    """The server really checks credentials: the user's keys list the bucket; a wrong secret, an unknown key
    and the user's keys on another bucket are refused."""
    s3.client(s3.keys).list_objects_v2(Bucket=s3.bucket)
    wrong_secret = {**s3.keys, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    unknown = {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN000000000", "AWS_SECRET_ACCESS_KEY": "x"}
    for keys, bucket, code in (
        (wrong_secret, s3.bucket, "SignatureDoesNotMatch"),
        (unknown, s3.bucket, "InvalidAccessKeyId"),
        (s3.keys, "another-bucket", "AccessDenied"),
    ):
        with pytest.raises(ClientError) as refused:
            s3.client(keys).list_objects_v2(Bucket=bucket)
        assert refused.value.response["Error"]["Code"] == code


def test_s3_remote_round_trip(results_clone: Path, s3: S3Server, tmp_path: Path) -> None:
    """The remote's URL and endpoint are committed; the keys travel only in the environment."""
    url = f"s3://{s3.bucket}/teachingassistant"
    run([DVC, "remote", "add", "bucket", url], cwd=results_clone)
    run([DVC, "remote", "modify", "bucket", "endpointurl", s3.endpoint], cwd=results_clone)
    commit_all(results_clone, "remote: bucket (s3)")
    config = committed_config(results_clone)
    assert url in config and s3.endpoint in config
    assert not any(word in config.lower() for word in SECRET_WORDS), f"secret in committed .dvc/config:\n{config}"
    colleague = tmp_path / "colleague"
    round_trip(results_clone, "bucket", colleague, local_config=[], env=s3.env())
    for clone in (results_clone, colleague):
        for name in ("config", "config.local"):
            written = clone / ".dvc" / name
            text = written.read_text(encoding="utf-8") if written.exists() else ""
            assert not any(key in text for key in s3.keys.values()), f"a key was written to {written}"
    listing = (
        s3.client(s3.keys).get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix="teachingassistant/")
    )
    assert sum(page["KeyCount"] for page in listing) >= len(MUST_ARRIVE), "the bucket holds the pushed objects"
    keyless = subprocess.run(
        [DVC, "status", "--cloud", "--remote", "bucket"], cwd=colleague, env=s3.env({}), capture_output=True, text=True
    )
    # nothing else to fall back on: no key in the clones' config, none in ~/.aws
    assert keyless.returncode != 0, f"without keys in the environment the bucket answered:\n{keyless.stdout}"
    assert "Unable to locate credentials" in keyless.stderr, keyless.stderr


def test_committed_project_config_holds_no_secret() -> None:
    config = (REPO / ".dvc" / "config").read_text(encoding="utf-8")
    assert not any(word in config.lower() for word in SECRET_WORDS), f".dvc/config:\n{config}"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=REPO)
    assert ignored.returncode == 0, ".dvc/config.local (credentials) must be git-ignored"


def test_linked_cache_keeps_one_copy_of_each_checkpoint(results_clone: Path, pipeline_repo: Path) -> None:
    """With cache.type hardlink,symlink the workspace file is the cache file: no second copy on disk."""
    cache_dir = Path(run([DVC, "cache", "dir"], cwd=results_clone).stdout.strip())
    assert cache_dir == pipeline_repo / ".dvc" / "cache"
    for rel in ("models/merged/model.safetensors", "models/gguf/teachingassistant-f16.gguf"):
        st = (results_clone / rel).stat()
        assert (results_clone / rel).is_symlink() or st.st_nlink >= 2, f"{rel} is a copy (nlink {st.st_nlink})"
        # DVC protects linked outputs: editing one in place would corrupt the cache (`dvc unprotect` first)
        assert st.st_mode & 0o222 == 0, f"{rel} is writable"
