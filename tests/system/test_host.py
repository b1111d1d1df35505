"""The product installed from source (pip + make install-data) in a booted sid
system: units, seeding, settings, journald, restarts, reboots, status."""

from __future__ import annotations


def test_boots_to_running_with_our_units_active(source_install, base, net, boot):
    pbx = boot([source_install, base], net.host("pbx", 10))
    assert pbx.failed_units() == []
    pbx.wait_active("pbxhost-seed.service", "asterisk.service", "autoban.service",
                    "websmsd.service")
    print(pbx.run("systemctl", "is-system-running").stdout)
