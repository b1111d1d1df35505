"""autoban's warning when every attack comes from its own default gateway."""

from ipaddress import ip_address

from pbxhost.autoban.gateway import MIN_EVENTS, GatewayWatch, gateways_v4, gateways_v6

ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100580A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000580A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
ROUTE6 = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n"
    "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n")
GW = ip_address("10.88.0.1")


def test_the_default_gateways_are_read_from_the_kernels_tables():
    assert gateways_v4(ROUTE) == {GW}
    assert gateways_v6(ROUTE6) == {ip_address("fe80::1")}
    assert gateways_v4("Iface\tDestination\tGateway\n") == set()


def test_it_warns_once_when_every_attack_comes_from_the_gateway():
    watch = GatewayWatch({GW})
    said = [watch.observe(GW) for _ in range(MIN_EVENTS + 2)]
    assert said[:MIN_EVENTS - 1] == [None] * (MIN_EVENTS - 1)
    assert "10.88.0.1" in said[MIN_EVENTS - 1] and "default gateway" in said[MIN_EVENTS - 1]
    assert said[MIN_EVENTS:] == [None, None]


def test_it_never_warns_once_another_address_attacked():
    watch = GatewayWatch({GW})
    watch.observe(ip_address("192.0.2.66"))
    assert all(watch.observe(GW) is None for _ in range(10))
    assert all(GatewayWatch(set()).observe(GW) is None for _ in range(10))
