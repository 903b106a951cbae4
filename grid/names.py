"""The names the grid gives things, one pattern each, for every place that checks one.

A region name is also a DNS label and a systemd instance name (``grid-scheduler@eu``),
so it is the strictest. Certificate names and owners are what ``grid certs issue``
writes into a certificate's subject and identity URI. Node names are what a
``grid node`` registers under (a dask worker name), by default the host name.

Every pattern ends in ``\\Z``: ``$`` would also accept a trailing newline, which in a
unit file or an environment file starts a line of the caller's choosing.
"""

from __future__ import annotations

import re

#: regions: ``eu``, ``us-east``
REGION = re.compile(r"[a-z][a-z0-9-]{0,62}\Z")
#: certificate names and owners: ``node-7``, ``alice``, ``sched-eu.example``
IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
#: node names (a host name by default)
NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


def is_region(value: object) -> bool:
    """Whether ``value`` is a valid region name."""
    return isinstance(value, str) and REGION.match(value) is not None


def is_identity(value: object) -> bool:
    """Whether ``value`` is a valid certificate name or owner."""
    return isinstance(value, str) and IDENTITY.match(value) is not None


def is_node_name(value: object) -> bool:
    """Whether ``value`` is a valid node name."""
    return isinstance(value, str) and NODE.match(value) is not None
