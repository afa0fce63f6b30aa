"""Remote storage round trips, for real: `dvc push` from a clone holding the pipeline's results, then
`git clone` + `dvc pull` into a fresh clone, which must end up with byte-identical checkpoints and GGUFs
and a clean `dvc status`. Two remotes: a local directory (a NAS mount looks the same) and SSH, served by
a real OpenSSH `sshd` on 127.0.0.1 with a throwaway host key and client key.

The remote's URL goes into the committed `.dvc/config`; the key path only into `.dvc/config.local`
(`dvc remote modify --local`), which each clone sets for itself — as the README tells users to.

sshd is a system package: `.ci/run` installs it (`apt-get install openssh-server`). Without it the SSH
test fails, it does not skip.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import DVC, REPO, assert_status_clean, clone_with_results, commit_all, free_port, run

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


def assert_remote_in_sync(repo: Path, remote: str) -> None:
    out = run([DVC, "status", "--cloud", "--remote", remote], cwd=repo).stdout
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


def round_trip(source: Path, remote: str, dest: Path, local_config: list[list[str]]) -> None:
    """Push from `source`, clone it to `dest`, apply the per-clone `--local` settings, pull, compare.
    Outputs marked `push: false` are not on the remote: the colleague rebuilds them with `dvc repro`,
    which must give the same bytes and rerun nothing else."""
    run([DVC, "push", "-r", remote], cwd=source)
    assert_remote_in_sync(source, remote)
    run(["git", "clone", "-q", str(source), str(dest)], cwd=dest.parent)
    for args in local_config:
        run([DVC, *args], cwd=dest)
    assert not (dest / "models").exists(), "a fresh clone has no model files before the pull"
    rebuilt = unpushed_outs(dest)
    if rebuilt:
        run([DVC, "pull", "-r", remote, "--allow-missing"], cwd=dest)
        assert not any((dest / rel).exists() for rel in rebuilt), f"push: false outputs {rebuilt} were pulled"
        result = run([DVC, "repro"], cwd=dest)
        output = result.stdout + result.stderr
        ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}
        assert ran == set(rebuilt.values()), f"rebuilding {sorted(rebuilt)} reran {sorted(ran)}"
    else:
        run([DVC, "pull", "-r", remote], cwd=dest)
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
        deadline = time.monotonic() + 20
        while True:
            if server.poll() is not None:
                pytest.fail(f"sshd exited ({server.returncode}):\n{(home / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"sshd did not listen on {port}:\n{(home / 'sshd.log').read_text()}")
                time.sleep(0.2)
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
