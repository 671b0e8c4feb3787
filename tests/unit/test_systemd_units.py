"""The shipped systemd units and example config: verified by systemd's own tools.

`systemd-analyze verify` refuses a unit whose ExecStart= binary is missing, and the
install path (/opt/spoold/venv/bin/spoold) does not exist on a build machine. So the
units are verified, unmodified, inside a throw-away root (--root) that holds a copy
of the system's unit directory plus stubs at exactly the paths the units execute.
No systemd needs to be running (PID 1 here is not systemd).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from spoold.config import Config, parse_config

REPO = Path(__file__).resolve().parents[2]
UNITS = {
    "spoold.service": REPO / "systemd" / "spoold.service",
    "spoold@.service": REPO / "systemd" / "spoold@.service",
    "spoold-api.service": REPO / "systemd" / "spoold-api.service",
}
EXAMPLE_CONFIG = REPO / "etc" / "spoold.yaml"
SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
# What may differ between the two units: the instance's identity, nothing else.
INSTANCE_ONLY = {"Description", "Conflicts", "SyslogIdentifier"}
INSTANCE_ENV = {"CUDA_VISIBLE_DEVICES=%i", "SPOOLD_NODE_ID=%H-gpu%i", "SPOOLD_METRICS_PORT_OFFSET=%i"}
MAX_EXPOSURE = 2.5


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is not installed: the unit files cannot be verified. "
            "Install it with `apt-get install -y systemd` (Debian/Ubuntu) or `dnf install -y systemd`."
        )
    return path


def directives(unit: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; comments and blank lines dropped."""
    section, out = "", []
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def executables(unit: Path) -> set[str]:
    """The absolute programs of every Exec*= line (prefixes such as '-' or '!' removed)."""
    found = set()
    for section, key, value in directives(unit):
        if section == "Service" and key.startswith("Exec") and value:
            program = value.split()[0].lstrip("-@:+!|")
            assert program.startswith("/"), f"{unit.name}: {key}= should name an absolute path, not {program}"
            found.add(program)
    return found


@pytest.fixture(scope="module")
def verify_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the system's units, ours in /etc/systemd/system, and stub executables."""
    root = tmp_path_factory.mktemp("root")
    source = next((d for d in SYSTEM_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    if source is None:
        pytest.fail(f"no systemd unit directory ({', '.join(map(str, SYSTEM_UNIT_DIRS))}); install systemd")
    shutil.copytree(source, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for name, path in UNITS.items():
        shutil.copy(path, units / name)
        for program in executables(path):
            stub = root / program.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    return root


@pytest.mark.parametrize("unit", ["spoold.service", "spoold@0.service", "spoold@15.service", "spoold-api.service"])
def test_systemd_analyze_verify(unit: str, verify_root: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", f"--root={verify_root}", "--man=no", unit],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = (result.stdout + result.stderr).strip()
    # verify exits 0 on unknown keys or bad values ("..., ignoring"): any word about our units fails.
    ours = [line for line in output.splitlines() if "spoold" in line]
    assert result.returncode == 0 and not ours, output


def test_verify_catches_a_typo(verify_root: Path) -> None:
    """Guards the test itself: a misspelt directive must show up in the output checked above."""
    units = verify_root / "etc/systemd/system"
    bad = units / "spoold-typo.service"
    bad.write_text(UNITS["spoold.service"].read_text().replace("ProtectHome=yes", "ProtectHmoe=yes"))
    try:
        result = subprocess.run(
            [systemd_analyze(), "verify", f"--root={verify_root}", "--man=no", bad.name],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        bad.unlink()
    assert "ProtectHmoe" in result.stdout + result.stderr


@pytest.mark.parametrize("name", ["spoold.service", "spoold@.service", "spoold-api.service"])
def test_security_exposure(name: str, tmp_path: Path) -> None:
    unit = tmp_path / name.replace("@.", "@0.")
    shutil.copy(UNITS[name], unit)
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_two_units_differ_only_in_the_instance() -> None:
    plain = directives(UNITS["spoold.service"])
    template = directives(UNITS["spoold@.service"])
    env = {v for s, k, v in template if k == "Environment"} - {v for s, k, v in plain if k == "Environment"}
    assert env == INSTANCE_ENV
    strip = [d for d in template if d[1] not in INSTANCE_ONLY and not (d[1] == "Environment" and d[2] in env)]
    assert strip == [d for d in plain if d[1] not in INSTANCE_ONLY]


def test_hardening_that_must_stay() -> None:
    """Settings the issue asks for, and ones that would break GPUs or JITs if added."""
    got = {(k, v) for _, k, v in directives(UNITS["spoold.service"])}
    keys = {k for k, _ in got}
    for setting in [
        ("Type", "notify"), ("NotifyAccess", "main"), ("ProtectSystem", "strict"), ("Restart", "on-failure"),
        ("ReadWritePaths", "/var/spool/spoold"), ("RequiresMountsFor", "/var/spool/spoold"),
        ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"), ("ProtectHome", "yes"), ("User", "spoold"),
        ("KillMode", "mixed"), ("ExecReload", "/bin/kill -HUP $MAINPID"), ("DeviceAllow", "char-nvidia* rw"),
    ]:  # fmt: skip
        assert setting in got, setting
    assert "WatchdogSec" in keys
    assert not keys & {"MemoryDenyWriteExecute", "PrivateDevices", "ProcSubset", "DynamicUser"}


def test_api_unit_is_sandboxed_like_the_daemon() -> None:
    """spoold-api.service: Type=notify, and every sandbox setting of spoold.service but the GPU's device access."""
    daemon = {(k, v) for s, k, v in directives(UNITS["spoold.service"]) if s == "Service"}
    api = {(k, v) for s, k, v in directives(UNITS["spoold-api.service"]) if s == "Service"}
    kinds = ("Protect", "Private", "Restrict", "SystemCall", "Capability", "Ambient", "NoNew", "Lock", "Read", "Device", "UMask", "User")
    sandbox = {d for d in daemon if d[0].startswith((*kinds, "Group"))}
    assert sandbox - {("DeviceAllow", "char-nvidia* rw")} <= api
    assert {("Type", "notify"), ("NotifyAccess", "main"), ("ExecReload", "/bin/kill -HUP $MAINPID"), ("PrivateDevices", "yes")} <= api
    assert ("ExecStart", "/opt/spoold/venv/bin/spoold api") in api


# ---- the example config the units read --------------------------------------------------------


def _fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        names.add(prefix + name)
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names |= _fields(kind, f"{prefix}{name}.")
    return names


def _keys(data: dict[str, object], prefix: str = "") -> set[str]:
    names = set()
    for key, value in data.items():
        names.add(prefix + key)
        if isinstance(value, dict) and key != "engine_args":
            names |= _keys(value, f"{prefix}{key}.")
    return names


def test_example_config_documents_every_key_at_its_default() -> None:
    text = EXAMPLE_CONFIG.read_text()
    assert parse_config(text, str(EXAMPLE_CONFIG)) == Config()
    assert _keys(yaml.safe_load(text)) == _fields(Config)


def test_example_config_handler_examples_parse() -> None:
    text = EXAMPLE_CONFIG.read_text()
    block = text.split("# handlers:\n", 1)[1].split("#   Every handler", 1)[0]
    example = "handlers:\n" + "".join(line[2:] + "\n" for line in block.splitlines())
    config = parse_config(example, "commented handlers example")
    assert {h.type for h in config.handlers} == {"webhook", "exec", "copy", "python", "s3", "postgres", "label_studio"}


def test_gpu_group_drop_in_verifies(verify_root: Path) -> None:
    """systemd/gpu-group.conf installed as a drop-in of one instance (models larger than one GPU)."""
    drop_ins = verify_root / "etc/systemd/system/spoold@0.service.d"
    drop_ins.mkdir(parents=True, exist_ok=True)
    text = (REPO / "systemd" / "gpu-group.conf").read_text()

    def verify(drop_in: str) -> str:
        (drop_ins / "gpu-group.conf").write_text(drop_in)
        result = subprocess.run(
            [systemd_analyze(), "verify", f"--root={verify_root}", "--man=no", "spoold@0.service"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0
        return (result.stdout + result.stderr).strip()

    try:
        output = verify(text)
        assert not [line for line in output.splitlines() if "spoold" in line], output
        assert "Environmnt" in verify(text.replace("Environment=CUDA", "Environmnt=CUDA"))  # the drop-in is read
    finally:
        shutil.rmtree(drop_ins)
