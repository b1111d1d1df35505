"""oci/: the Containerfile, the compose file, the quadlet unit and the
generator agree with each other and with the configuration they ship."""

import re
import subprocess
from pathlib import Path

from pbxhost import conf

ROOT = Path(__file__).resolve().parents[2]
OCI = ROOT / "oci"


def exposed() -> set[str]:
    text = (OCI / "Containerfile").read_text()
    return {p for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}


def test_the_exposed_rtp_range_is_rtp_confs():
    rtp = conf.load(ROOT / "etc/asterisk/rtp.conf").section("general")
    assert f"{rtp.get('rtpstart')}-{rtp.get('rtpend')}/udp" in exposed()
    assert {"5060/udp", "5060/tcp", "5061/tcp", "80/tcp"} <= exposed()


def test_the_webhook_port_exposed_is_the_one_compose_sets():
    assert "WEBSMSD_PORT=80" in (OCI / "compose.yaml").read_text()
    # websmsd refuses a webhook open to anybody: the image does not switch it on
    assert "ENV WEBSMSD_PORT" not in (OCI / "Containerfile").read_text()


def test_systemd_is_pid_1_with_its_stop_signal_the_volume_and_the_healthcheck():
    text = (OCI / "Containerfile").read_text()
    for line in ('CMD ["/sbin/init"]', "STOPSIGNAL SIGRTMIN+3", "VOLUME /srv"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^HEALTHCHECK .* CMD pbxhost status$", text, re.M)
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, re.M)
    assert stages == ["deps", "mini", "base", "full", "xtra"]


def test_the_compose_file_publishes_what_the_image_exposes():
    text = (OCI / "compose.yaml").read_text()
    published = {m[1] + (m[2] or "/tcp") for m in
                 re.finditer(r'^\s*- "[\d-]+:([\d-]+)(/\w+)?"', text, re.M)}
    assert published == exposed()
    assert re.search(r"^\s*- net_admin", text, re.M) and "SYSLOG_LEVEL=4" in text
    assert re.search(r"^\s*- tele-conf:/srv$", text, re.M)


def test_the_quadlet_unit_adds_net_admin_and_the_volume():
    text = (OCI / "pbxhost.container").read_text()
    assert "AddCapability=CAP_NET_ADMIN" in text and re.search(r"^Volume=\S+:/srv$", text, re.M)


def test_the_generator_imports_every_setting_the_units_read(tmp_path):
    keys = re.search(r"^keys='([^']+)'", (OCI / "pbxhost-container-env").read_text(), re.M)[1]
    read = re.findall(r'(?:_raw|_int|flag)\(env, "([A-Z_]+)"',
                      (ROOT / "pbxhost/settings.py").read_text())
    settings = set(read)
    # PBXHOST_LOG is the OpenRC services' (syslog); the image logs to the journal
    assert set(keys.split("|")) == settings - {"PBXHOST_LOG"}
    proc = subprocess.run(["sh", "-n", str(OCI / "pbxhost-container-env")], capture_output=True)
    assert proc.returncode == 0, proc.stderr
