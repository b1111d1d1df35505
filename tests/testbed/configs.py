"""Minimal Asterisk configs that several tests and benchmarks start from."""

from __future__ import annotations

TRANSPORTS = """\
[transport-udp]
type = transport
protocol = udp
bind = 0.0.0.0:5060

[transport-udp6]
type = transport
protocol = udp
bind = [::]:5060
"""


def pjsip_user(name: str, password: str, max_contacts: int = 10,
               qualify: int | None = None) -> str:
    """A PJSIP endpoint, auth and aor for one phone user."""
    aor = f"[{name}]\ntype = aor\nmax_contacts = {max_contacts}\n"
    if qualify:
        aor += f"qualify_frequency = {qualify}\n"
    return (f"\n[{name}]\ntype = endpoint\nauth = {name}\naors = {name}\ncontext = default\n"
            f"[{name}]\ntype = auth\nauth_type = userpass\nusername = {name}\n"
            f"password = {password}\n" + aor)


def manager_conf(user: str, secret: str, read: str, write: str = "") -> str:
    """AMI on loopback with one user, as the product's manager.conf has them."""
    return ("[general]\nenabled = yes\nbindaddr = 127.0.0.1\nport = 5038\n\n"
            f"[{user}]\nsecret = {secret}\nread = {read}\nwrite = {write}\n")
