"""The observer role: its certificate, its row of the protocol table and its access rules.

An observer certificate is the operators' dashboard: it reads every job's
metadata and the node view, and may call nothing that changes the grid, reads
data or results, or runs code. The attacks on a real grid are in
``tests/system/test_observer.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import dask.config
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from grid.dashboard.views import GridRPCView
from grid.protocol import messages
from grid.protocol.messages import PROTOCOL, ProtocolViolation, check_fields, handler_names
from grid.scheduler.access import AccessControl
from grid.security import certs
from grid.security.certs import Identity, check_certificate, identity_from_der, init_ca, issue
from grid.security.throwaway import make_throwaway_grid
from grid.security.cli import certs as certs_cli

#: what an observer may call on a scheduler: the dashboard's reads and a Dask client's connection
OBSERVER_OPS = {"identity", "register-client", "grid_info", "grid_jobs", "grid_job"}
#: what it must never call: data, results, changes, code
FORBIDDEN = {
    "scatter", "gather", "get_data", "who_has", "get_metadata", "ncores", "versions",
    "grid_submit", "grid_cancel", "grid_result", "grid_wait",
    "grid_register_dataset", "grid_register_files", "grid_drop_dataset",
    "grid_attach", "grid_detach", "grid_region_round",
    "run_function", "broadcast", "register_scheduler_plugin", "register_worker_plugin", "retire_workers",
    "register-worker", "register_nanny", "log_event", "heartbeat_worker",
}


@pytest.fixture
def ca(tmp_path: Path) -> certs.CA:
    return init_ca(tmp_path / "ca", name="testgrid")


# --- the protocol table ------------------------------------------------------------------------
def test_the_observer_row_allows_exactly_the_reads_of_a_dashboard():
    allowed = handler_names("scheduler", "observer")
    assert allowed == OBSERVER_OPS
    assert not allowed & FORBIDDEN
    # an observer reads: it may call nothing a data scientist may not call
    assert allowed <= handler_names("scheduler", "client")


def test_an_observer_may_not_connect_to_nodes_or_nannies():
    assert "observer" not in PROTOCOL["node"] and "observer" not in PROTOCOL["nanny"]
    assert handler_names("node", "observer") == frozenset()
    assert handler_names("nanny", "observer") == frozenset()


def test_an_observers_stream_carries_no_keys_graphs_or_data():
    stream = PROTOCOL["scheduler"]["observer"].streams
    assert set(stream) == {"client"}  # it registers as a Dask client, never as a worker
    assert set(stream["client"]) == {"heartbeat-client", "close-client", "subscribe-topic", "unsubscribe-topic", "close-stream"}
    client_stream = PROTOCOL["scheduler"]["client"].streams["client"]
    assert set(stream["client"]) < set(client_stream)  # a strict subset: no key desires or releases


@pytest.mark.parametrize("topic", ["print", "warn"])
def test_an_observer_follows_the_screen_topics_like_every_dask_client(topic):
    spec = PROTOCOL["scheduler"]["observer"].streams["client"]["subscribe-topic"]
    check_fields("subscribe-topic", {"topic": topic, "client": "c"}, spec)


@pytest.mark.parametrize("topic", ["all", "grid", ["print", "all"], None])
def test_an_observer_follows_no_other_topic(topic):
    spec = PROTOCOL["scheduler"]["observer"].streams["client"]["subscribe-topic"]
    with pytest.raises(ProtocolViolation, match="print and warn"):
        check_fields("subscribe-topic", {"topic": topic, "client": "c"}, spec)


def test_the_job_read_checks_its_fields():
    spec = PROTOCOL["scheduler"]["observer"].handlers["grid_job"]
    check_fields("grid_job", {"job_id": "eu-1", "history": True}, spec)
    with pytest.raises(ProtocolViolation, match="job_id"):
        check_fields("grid_job", {"job_id": {"x": 1}}, spec)


def test_the_observer_row_covers_every_call_of_the_dashboard():
    """Drive the dashboard's reader over a scheduler's handler table that records what is asked."""
    asked: list[str] = []
    job = {"id": "eu-1", "owner": "alice", "home": "eu", "status": "running", "submitted": 1.0, "rounds": 3, "rounds_done": 1}

    def reply(op: str):
        def handler(comm=None, **kwargs):
            asked.append(op)
            if op == "grid_info":
                return {"status": "OK", "region": "eu", "address": "tls://eu:8786", "workers": [], "nodes": {}, "jobs": {}}
            if op == "grid_jobs":
                return {"status": "OK", "jobs": [job]}
            if op == "grid_job":
                return {"status": "OK", "job": {**job, "history": []}}
            raise AssertionError(f"the dashboard called {op!r}")

        return handler

    class Handlers(dict):
        def __missing__(self, op):
            return reply(op)

    async def main() -> GridRPCView:
        view = GridRPCView({"eu": "tls://eu:8786"}, local={"eu": Handlers()})
        await view.refresh()
        await view.refresh_job("eu-1")
        await view.close()
        return view

    view = asyncio.run(main())
    assert [j["id"] for j in view.jobs] == ["eu-1"] and "eu-1" in view.details
    assert set(asked) == {"grid_info", "grid_jobs", "grid_job"}
    assert set(asked) <= handler_names("scheduler", "observer")


# --- access control on the scheduler ------------------------------------------------------------
def observer(name: str = "dash") -> Identity:
    return Identity(name, "observer", None, 7)


@pytest.mark.parametrize("op", sorted(OBSERVER_OPS))
def test_the_scheduler_lets_an_observer_read(op):
    AccessControl("eu").check(op, observer(), {})


@pytest.mark.parametrize("op", sorted(FORBIDDEN | {"update_graph", "cancel", "stimulus_cancel", "get_task_stream"}))
def test_the_scheduler_refuses_an_observer_everything_else_naming_the_certificate_to_use(op):
    with pytest.raises(PermissionError) as info:
        AccessControl("eu").check(op, observer(), {})
    message = str(info.value)
    assert "observer certificate" in message and repr(op) in message
    assert "client certificate" in message and "admin certificate" in message


class PeerComm:
    """What a TLS comm tells a handler of its peer: the verified certificate, as ``ssl`` shows it."""

    def __init__(self, role: str, name: str, serial: int) -> None:
        self.extra_info = {
            "peercert": {
                "subject": ((("organizationalUnitName", role),), (("commonName", name),)),
                "subjectAltName": (("URI", f"grid://{role}/{name}"),),
                "serialNumber": f"{serial:X}",
            }
        }


def test_an_observer_named_like_a_user_owns_nothing_of_that_user():
    access = AccessControl("eu")
    assert access.may_see(PeerComm("client", "alice", 1), "alice")
    assert not access.may_see(PeerComm("observer", "alice", 2), "alice")
    assert not access.may_see(PeerComm("observer", "dash", 3), "alice")
    dash = PeerComm("observer", "dash", 3)
    assert not access.privileged(dash)  # it sees the grid through its read handlers, not more
    assert not access.sees_nodes(dash)  # Dask's identity / ncores name no node to it


# --- the certificate ----------------------------------------------------------------------------
def test_an_observer_certificate_is_a_client_auth_certificate_bound_to_no_region(ca):
    issued = issue(ca, "observer", "ops-dashboard")
    ident = check_certificate(issued.cert_path, ca.cert_path, expected_role="observer")
    assert (ident.role, ident.name, ident.region) == ("observer", "ops-dashboard", None)
    assert ident.uri == "grid://observer/ops-dashboard"
    assert identity_from_der(issued.der) == ident
    eku = issued.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # it dials schedulers, it never listens
    names = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == ["grid://observer/ops-dashboard"]  # no host names
    assert issued.cert_path.parent == ca.directory / "observer" / "ops-dashboard"


def test_an_observer_certificate_names_no_region_nor_host(ca):
    with pytest.raises(ValueError, match="observer certificates are not bound to a region.*drop --region"):
        issue(ca, "observer", "dash", region="eu")
    with pytest.raises(ValueError, match="observer certificates carry no host names.*drop --host"):
        issue(ca, "observer", "dash", hosts=["dash.example.org"])


def test_an_observer_certificate_lasts_like_a_clients_unless_configured(ca):
    def days(issued: certs.IssuedCert) -> float:
        c = issued.cert
        return (c.not_valid_after_utc - c.not_valid_before_utc) / dt.timedelta(days=1)

    assert certs.default_days("observer") == certs.default_days("client") == 365
    assert days(issue(ca, "observer", "dash")) == 365
    with dask.config.set({"grid.security.days.observer": 30}):
        assert days(issue(ca, "observer", "dash-2")) == 30
    assert days(issue(ca, "observer", "dash-3", days=7)) == 7


def test_an_observer_certificate_fills_the_client_slot_only(ca):
    issued = issue(ca, "observer", "dash")
    sec = issued.security()
    assert sec.tls_client_cert == str(issued.cert_path) and sec.tls_client_key == str(issued.key_path)
    assert sec.tls_scheduler_cert is None and sec.tls_worker_cert is None
    assert sec.require_encryption
    assert certs.security_for("observer", ca.cert_path, issued.cert_path, issued.key_path).tls_worker_cert is None


def test_grid_certs_issues_an_observer(tmp_path):
    runner = CliRunner()
    d = str(tmp_path / "ca")
    assert runner.invoke(certs_cli, ["init", "--dir", d], catch_exceptions=False).exit_code == 0
    result = runner.invoke(certs_cli, ["issue", "observer", "ops-dashboard", "--dir", d], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "issued observer 'ops-dashboard'" in result.output
    assert (tmp_path / "ca" / "observer" / "ops-dashboard" / "ops-dashboard.pem").exists()
    refused = runner.invoke(certs_cli, ["issue", "observer", "dash", "--region", "eu", "--dir", d])
    assert refused.exit_code != 0 and "not bound to a region" in refused.output
    listed = runner.invoke(certs_cli, ["list", "--dir", d], catch_exceptions=False)
    assert "observer" in listed.output and "ops-dashboard" in listed.output


def test_a_throwaway_grid_has_an_observer(tmp_path):
    tg = make_throwaway_grid(tmp_path, ["eu"])
    assert tg.observer is not None and tg.observer.identity.role == "observer"
    assert tg.security("eu", client="observer").tls_client_cert == str(tg.observer.cert_path)
    with pytest.raises(KeyError, match="'admin', 'client' or 'observer'"):
        tg.security("eu", client="root")


def test_the_settings_schema_knows_the_observers_lifetime():
    from grid import config

    assert config.get("security.days.observer") == 365
    assert messages.PRIVILEGED == frozenset({"admin", "scheduler"})  # an observer is never trusted with Dask


# --- `grid dashboard`'s advice ------------------------------------------------------------------
def test_the_dashboard_advises_an_observer_certificate_only_when_given_a_clients(ca, tmp_path):
    from grid.dashboard.app import certificate_note

    def spec(role: str, name: str) -> dict:
        issued = issue(ca, role, name)
        tls = {"ca-file": str(ca.cert_path), "cert": str(issued.cert_path), "key": str(issued.key_path)}
        return {"regions": {"eu": "tls://127.0.0.1:8786"}, "tls": tls}

    note = certificate_note(spec("client", "alice"))
    assert note is not None and "client certificate of 'alice'" in note and "only alice's jobs" in note
    assert "grid certs issue observer dashboard" in note
    assert certificate_note(spec("observer", "dashboard")) is None
    assert certificate_note(spec("admin", "ops")) is None
    assert certificate_note({"regions": {"eu": "tcp://127.0.0.1:8786"}}) is None
