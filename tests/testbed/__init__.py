"""The test bed: a cached Debian sid tree with Asterisk 22, network namespaces
as separate hosts, a real Asterisk per test, sipp and baresip as SIP peers."""
