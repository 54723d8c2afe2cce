"""The private PostgreSQL cluster and RabbitMQ nodes of the tests that restart or
reconfigure a service: which server they find, and that a missing one fails under CI
(a silent skip would drop a guarantee test) and skips elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import private_postgres, private_rabbit
from tests.support.rabbit_tls import tls_config
from tests.support.tls import Pki


def installed(root: Path, *versions: str) -> None:
    for version in versions:
        bindir = root / version / "bin"
        bindir.mkdir(parents=True)
        (bindir / "initdb").touch()


class TestServerBindir:
    def test_the_newest_debian_version_by_number(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        installed(tmp_path, "9.6", "15", "13")
        monkeypatch.setattr(private_postgres, "_DEBIAN_VERSIONS", tmp_path)
        assert private_postgres.server_bindir() == tmp_path / "15" / "bin"

    def test_initdb_on_path_without_a_debian_layout(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        installed(tmp_path, "bin-only")
        initdb = tmp_path / "bin-only" / "bin" / "initdb"
        initdb.chmod(0o755)
        monkeypatch.setattr(private_postgres, "_DEBIAN_VERSIONS", tmp_path / "absent")
        monkeypatch.setenv("PATH", str(initdb.parent))
        assert private_postgres.server_bindir() == initdb.parent


@pytest.fixture
def nothing_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(private_postgres, "_DEBIAN_VERSIONS", tmp_path / "absent")
    monkeypatch.setattr(private_rabbit, "_DEBIAN_SCRIPTS", tmp_path / "absent")
    monkeypatch.setenv("PATH", str(tmp_path))
    return tmp_path


class TestMissingServer:
    @pytest.mark.parametrize("ci", ["true", "1"])
    def test_a_missing_postgresql_fails_under_ci_saying_what_to_install(
        self, nothing_installed: Path, monkeypatch: pytest.MonkeyPatch, ci: str
    ) -> None:
        monkeypatch.setenv("CI", ci)
        with (
            pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"),
            private_postgres.private_postgres(),
        ):
            pass

    def test_a_missing_postgresql_skips_elsewhere(
        self, nothing_installed: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("CI", raising=False)
        with pytest.raises(pytest.skip.Exception), private_postgres.private_postgres():
            pass

    def test_a_missing_rabbitmq_fails_under_ci_saying_what_to_install(
        self, nothing_installed: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CI", "true")
        with (
            pytest.raises(pytest.fail.Exception, match="apt-get install rabbitmq-server"),
            private_rabbit.private_rabbit(nothing_installed),
        ):
            pass

    def test_a_missing_rabbitmq_skips_elsewhere(
        self, nothing_installed: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("CI", raising=False)
        with pytest.raises(pytest.skip.Exception), private_rabbit.private_rabbit(nothing_installed):
            pass


class TestTlsConfig:
    PKI = Pki(*(Path(f"/pki/{name}.pem") for name in ("ca", "cert", "key", "c", "ck", "o")))

    def settings(self, *, client_certificate_required: bool) -> dict[str, str]:
        text = tls_config(self.PKI, 5999, client_certificate_required=client_certificate_required)
        lines = (line.partition(" = ") for line in text.splitlines())
        return {key: value for key, _, value in lines}

    def test_a_listener_on_loopback_with_the_servers_certificate(self) -> None:
        settings = self.settings(client_certificate_required=False)
        assert settings["listeners.ssl.local"] == "127.0.0.1:5999"
        assert settings["ssl_options.cacertfile"] == "/pki/ca.pem"
        assert settings["ssl_options.certfile"] == "/pki/cert.pem"
        assert settings["ssl_options.keyfile"] == "/pki/key.pem"
        assert settings["ssl_options.verify"] == "verify_none"
        assert settings["ssl_options.fail_if_no_peer_cert"] == "false"

    def test_a_client_certificate_signed_by_the_ca_is_required_when_asked(self) -> None:
        settings = self.settings(client_certificate_required=True)
        assert settings["ssl_options.verify"] == "verify_peer"
        assert settings["ssl_options.fail_if_no_peer_cert"] == "true"
