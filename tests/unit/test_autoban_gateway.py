"""autoban's warning when every attack comes from its own default gateway."""

from ipaddress import ip_address

from pbxhost.autoban.gateway import MIN_EVENTS, GatewayWatch, gateways

ROUTES4 = '[{"dst":"default","gateway":"10.88.0.1","dev":"eth0","flags":[]}]'
ROUTES6 = '[{"dst":"default","gateway":"fe80::1","dev":"eth0","metric":1024,"flags":[]}]'
GW = ip_address("10.88.0.1")


def test_the_default_gateways_are_read_from_ip_route():
    assert gateways(ROUTES4) == {GW}
    assert gateways(ROUTES6) == {ip_address("fe80::1")}
    assert gateways("[]") == gateways("") == set()
    assert gateways('[{"dst":"default","dev":"wg0","flags":[]}]') == set()  # no next hop


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
