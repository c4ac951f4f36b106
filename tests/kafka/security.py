"""A secured single Kafka node for the security suite: every client security mode on one broker.

``SecuredKafka(workdir)`` generates a throw-away CA and certificates (``trustme``), SCRAM users (at
storage format time) and PLAIN users (in the listener's JAAS configuration), and runs one KRaft node
with these listeners, each on its own loopback port:

=============  =================  =================================================================
listener       protocol           what it checks
=============  =================  =================================================================
PLAINTEXT      PLAINTEXT          nothing: the tests' super user (``User:ANONYMOUS``), for set-up
SASL           SASL_PLAINTEXT     PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 passwords
TLS            SSL                nothing from the client (server verification only)
MTLS           SSL                a client certificate from the CA (``ssl.client.auth=required``)
SASLTLS        SASL_SSL           PLAIN passwords over TLS (PLAIN only: a mechanism mismatch)
REAUTH         SASL_PLAINTEXT     SCRAM-SHA-512, sessions of ``REAUTH_MS`` (KIP-368): a client that
                                  does not re-authenticate (aiokafka) is disconnected at expiry
WRONGHOST      SSL                serves a certificate for ``kafka.invalid``, not 127.0.0.1
EXPIRED        SSL                serves a certificate that expired yesterday
=============  =================  =================================================================

The standard authorizer is on with ``allow.everyone.if.no.acl.found=false``: the SASL users and the
mutual-TLS client (principal: its certificate's CN) may do only what an ACL allows. ``grant`` and
``revoke`` manage ACLs through the admin API (CreateAcls/DeleteAcls) on the PLAINTEXT listener.
The controller and inter-broker listeners stay PLAINTEXT on loopback.
"""

from __future__ import annotations

import datetime as dt
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.kafka.cluster import KafkaCluster, free_port

SERVICE_USER = "svc"
"""The service's principal: all it may do is on topics and groups named ``sec*``."""
LIMITED_USER = "limited"
"""A principal that gets its ACLs test by test."""
CLIENT_CN = "marker-ingest"
"""The mutual-TLS client certificate's CN, which the broker maps to ``User:marker-ingest``."""
PREFIX = "sec"
REAUTH_MS = 3000
"""``connections.max.reauth.ms`` of the REAUTH listener: how long a connection stays authenticated."""

LISTENERS = {
    "SASL": "SASL_PLAINTEXT",
    "TLS": "SSL",
    "MTLS": "SSL",
    "SASLTLS": "SASL_SSL",
    "REAUTH": "SASL_PLAINTEXT",
    "WRONGHOST": "SSL",
    "EXPIRED": "SSL",
}

# Kafka's wire codes (org.apache.kafka.common.acl / resource).
RESOURCE = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
PATTERN = {"literal": 3, "prefixed": 4}
OPERATION = {"all": 2, "read": 3, "write": 4, "create": 5, "describe": 8, "describe_configs": 10}
ALLOW = 3


@dataclass(frozen=True)
class Files:
    """Where the generated PEM files are."""

    ca: Path
    other_ca: Path
    client_cert: Path
    client_key: Path
    expired_client_cert: Path
    expired_client_key: Path


def _pkcs12(path: Path, cert: trustme.LeafCert, password: str) -> None:
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    chain = [x509.load_pem_x509_certificate(b.bytes()) for b in cert.cert_chain_pems]
    blob = pkcs12.serialize_key_and_certificates(
        b"broker",
        key,  # type: ignore[arg-type]
        chain[0],
        chain[1:] or None,
        serialization.BestAvailableEncryption(password.encode()),
    )
    path.write_bytes(blob)


def _pem_pair(workdir: Path, name: str, cert: trustme.LeafCert) -> tuple[Path, Path]:
    crt, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key))
    crt.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    return crt, key


class SecuredKafka:
    """One secured Kafka node (see the module docstring); a context manager."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        self.password = "pw-" + secrets.token_urlsafe(12)
        """The service user's password: the secret the leak test searches every output for."""
        self.limited_password = "lim-" + secrets.token_urlsafe(12)
        store_password = secrets.token_urlsafe(12)
        ca, other = trustme.CA(), trustme.CA()
        ca.cert_pem.write_to_path(str(pki / "ca.pem"))
        other.cert_pem.write_to_path(str(pki / "other-ca.pem"))
        yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        stores = {
            "server": ca.issue_cert("127.0.0.1", "localhost"),
            "wronghost": ca.issue_cert("kafka.invalid"),
            "expired": ca.issue_cert(
                "127.0.0.1", "localhost", not_before=yesterday - dt.timedelta(days=30), not_after=yesterday
            ),
        }
        for name, cert in stores.items():
            _pkcs12(pki / f"{name}.p12", cert, store_password)
        client_crt, client_key = _pem_pair(
            pki, "client", ca.issue_cert("client.invalid", common_name=CLIENT_CN)
        )
        old_crt, old_key = _pem_pair(
            pki,
            "client-expired",
            ca.issue_cert(
                "client.invalid",
                common_name=CLIENT_CN,
                not_before=yesterday - dt.timedelta(days=30),
                not_after=yesterday,
            ),
        )
        self.files = Files(pki / "ca.pem", pki / "other-ca.pem", client_crt, client_key, old_crt, old_key)
        self.ports = {name: free_port() for name in LISTENERS}
        plain_users = f'user_{SERVICE_USER}="{self.password}" user_{LIMITED_USER}="{self.limited_password}"'
        extra = {
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(pki / "server.p12"),
            "ssl.keystore.password": store_password,
            "ssl.key.password": store_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(pki / "ca.pem"),
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+).*$/$1/,DEFAULT",
            "listener.name.mtls.ssl.client.auth": "required",
            "listener.name.wronghost.ssl.keystore.location": str(pki / "wronghost.p12"),
            "listener.name.expired.ssl.keystore.location": str(pki / "expired.p12"),
        }
        for listener in ("sasl", "sasltls"):
            extra[f"listener.name.{listener}.plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
            )
        for mech in ("scram-sha-256", "scram-sha-512"):
            extra[f"listener.name.sasl.{mech}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        extra["listener.name.sasltls.sasl.enabled.mechanisms"] = "PLAIN"
        extra["listener.name.reauth.sasl.enabled.mechanisms"] = "SCRAM-SHA-512"
        extra["listener.name.reauth.scram-sha-512.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        )
        extra["listener.name.reauth.connections.max.reauth.ms"] = str(REAUTH_MS)
        scram = []
        for user, password in ((SERVICE_USER, self.password), (LIMITED_USER, self.limited_password)):
            for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                scram += ["--add-scram", f"{mech}=[name={user},password={password}]"]
        self.cluster = KafkaCluster(
            self.workdir,
            brokers=1,
            extra=extra,
            listeners={name: (proto, self.ports[name]) for name, proto in LISTENERS.items()},
            format_args=scram,
        )

    @property
    def admin_bootstrap(self) -> str:
        """The PLAINTEXT listener: the super user, for set-up and reading back."""
        return self.cluster.bootstrap_servers

    def bootstrap(self, listener: str) -> str:
        """The address of one of the secured listeners."""
        return f"127.0.0.1:{self.ports[listener]}"

    def start(self) -> SecuredKafka:
        """Start the node (about 8 s) and let the service user work on ``sec*`` topics and groups."""
        self.cluster.start()
        return self

    def stop(self) -> None:
        """Stop the node; its log stays in ``workdir``."""
        self.cluster.stop()

    def __enter__(self) -> SecuredKafka:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def set_scram_password(self, user: str, password: str) -> None:
        """Create or change ``user``'s SCRAM-SHA-512 credential (Kafka's ConfigCommand, as the super user).

        Connections already authenticated keep working until they re-authenticate or reconnect.
        """
        node = self.cluster.nodes[0]
        cmd = [
            *node.java_command(
                "-Xms32m -Xmx128m", "org.apache.kafka.tools.ConfigCommand", "kafka.admin.ConfigCommand"
            ),
            "--bootstrap-server",
            self.admin_bootstrap,
            "--alter",
            "--entity-type",
            "users",
            "--entity-name",
            user,
            "--add-config",
            f"SCRAM-SHA-512=[iterations=4096,password={password}]",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ConfigCommand failed ({done.returncode}): {done.stderr[-2000:]}")

    async def grant(
        self, principal: str, resource: str, name: str, operations: list[str], *, pattern: str = "literal"
    ) -> None:
        """Allow ``principal`` (``User:x``) these operations on a topic, group or the cluster."""
        await self._acls(True, principal, resource, name, operations, pattern)

    async def revoke(
        self, principal: str, resource: str, name: str, operations: list[str], *, pattern: str = "literal"
    ) -> None:
        """Remove the ACLs ``grant`` added."""
        await self._acls(False, principal, resource, name, operations, pattern)

    async def _acls(
        self, add: bool, principal: str, resource: str, name: str, operations: list[str], pattern: str
    ) -> None:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import for_code
        from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest

        admin = AIOKafkaAdminClient(bootstrap_servers=self.admin_bootstrap)
        await admin.start()
        try:
            for op in operations:
                args = (RESOURCE[resource], name, PATTERN[pattern], principal, "*", OPERATION[op], ALLOW)
                request = CreateAclsRequest(*args) if add else DeleteAclsRequest(*args)
                response = await admin._send_request(request)
                codes = [r[0] for r in (response.creation_responses if add else response.filter_responses)]
                if any(codes):
                    raise for_code(max(codes))(f"ACL {op} on {resource} {name} for {principal}")
        finally:
            await admin.close()
