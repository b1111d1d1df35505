"""pbxhost: a small secure PBX on systemd (Asterisk, autoban, websms)."""

__version__ = "0.1.0"
