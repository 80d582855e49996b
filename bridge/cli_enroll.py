"""``trustmesh-bridge enroll``: what config management installs on a brownfield host (docs/vm-onboarding.md).

``enroll --host NAME --method x509pop|join-token --out DIR …`` writes into DIR the agent's
configuration (``agent.toml``), the trust bundle it verifies the CA with at first contact
(``bundle.pem``), for ``join-token`` a one-time join token (``join-token``, 0600) and a hardened
``trustmesh-agent.service``. Nothing is written unless everything succeeded.

The bundle (unless ``--trust-bundle`` gives it) and the join token come from the CA's admin API.
``bridge`` imports neither ``ca`` nor ``sds`` (docs/architecture.md), so enroll asks the CA the way an
operator does: it runs ``trustmesh-ca`` (the same installation's, ``python -m ca.cli``) as a child
process, which brings the CA CLI's whole client along — the local admin socket from the CA's config,
or a remote CA over HTTPS that must prove to be the CA before anything is sent, with its
``TRUSTMESH_SERVER``/``TRUSTMESH_TOKEN_FILE``/… environment. The token comes back on a pipe (never
in an argument list) and is written only to its 0600 file; it is never printed.

For x509pop, ``--rules`` checks offline that the host's certificate maps to a SPIFFE ID (as ``map
explain`` does), and refuses to enroll a host the CA would refuse.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.cert_explain import explain_certificate
from bridge.enroll import (
    BUNDLE_FILE,
    CONFIG_FILE,
    TOKEN_FILE,
    UNIT_NAME,
    Enrollment,
    HostCertificate,
    InstallPaths,
    Method,
    ca_address,
    install_path,
    render_agent_config,
    render_systemd_unit,
    service_user,
)
from bridge.enroll_files import SECRET_MODE, OutputFile, write_output
from bridge.legacy_chain import load_certificates, read_pki_file
from bridge.x509pop import agent_id
from spiffe_core.durations import parse_duration
from spiffe_core.errors import FailedPrecondition, InvalidArgument, TrustmeshError, UpstreamUnavailable
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import check_dns_name, load_pem_certificates

# The CA CLI waits at most 10 s for the CA; this bounds the whole child process.
CA_COMMAND_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class JoinToken:
    token: str
    agent_id: SpiffeId
    expires_at: str


@dataclass(frozen=True, slots=True)
class CaCommand:
    """``trustmesh-ca`` with the options that say which CA to talk to."""

    options: tuple[str, ...]

    def run(self, *command: str) -> str:
        """Run ``trustmesh-ca OPTIONS COMMAND…`` and return its standard output. Raises TrustmeshError
        with the CA CLI's own error line when it fails."""
        argv = [sys.executable, "-m", "ca.cli", *self.options, *command]
        what = f"trustmesh-ca {' '.join(command)}"
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CA_COMMAND_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise UpstreamUnavailable(f"{what} did not finish in {CA_COMMAND_TIMEOUT_SECONDS:.0f} s") from err
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            raise TrustmeshError(f"{what} failed: {lines[-1].removeprefix('trustmesh-ca: error: ')}")
        return done.stdout

    def bundle_pem(self) -> bytes:
        return self.run("bundle", "show", "--format", "pem").encode()

    def join_token(self, host: str, ttl: str, *, replace: bool) -> JoinToken:
        command = ["token", "generate", "--node-name", host, "--ttl", ttl, "--json"]
        reply = self.run(*command, *(["--replace"] if replace else []))
        try:
            document: Any = json.loads(reply)
            return JoinToken(str(document["token"]), SpiffeId.parse(document["spiffe_id"]), str(document["expires_at"]))
        except (ValueError, KeyError, TypeError) as err:  # the reply holds the token: never quote it
            raise TrustmeshError("trustmesh-ca token generate answered something other than its JSON reply") from err


def _ca_command(args: argparse.Namespace) -> CaCommand:
    options: list[str] = ["--trust-domain", args.trust_domain]
    for flag, value in (("--config", args.ca_config), ("--socket", args.ca_socket), ("--server", args.ca_server)):
        if value:
            options += [flag, value]
    return CaCommand(tuple(options))


def _bundle(args: argparse.Namespace, ca: CaCommand) -> bytes:
    """The CA's X.509 roots (PEM) the agent trusts at first contact: ``--trust-bundle``, else the CA's."""
    if args.trust_bundle:
        pem = read_pki_file(Path(args.trust_bundle), "trust bundle")
        source = args.trust_bundle
    else:
        pem, source = ca.bundle_pem(), "the CA's bundle"
    try:
        load_pem_certificates(pem)
    except InvalidArgument as err:
        raise InvalidArgument(f"{source} holds no PEM certificates ({err}); give the CA's bundle") from err
    return pem


def _certificate(args: argparse.Namespace) -> HostCertificate | None:
    given = {"--x509pop-cert": args.x509pop_cert, "--x509pop-key": args.x509pop_key}
    if Method(args.method) is Method.JOIN_TOKEN:
        x509pop_only = {**given, "--x509pop-chain": args.x509pop_chain, "--rules": args.rules}
        extra = [name for name, value in x509pop_only.items() if value]
        if extra:
            raise InvalidArgument(f"{', '.join(extra)} belong to --method x509pop; remove them for a join token")
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise InvalidArgument(
            f"--method x509pop needs {' and '.join(missing)}: where the host's enterprise certificate and key are "
            "on the host (or use --method join-token)"
        )
    if args.replace:
        raise InvalidArgument("--replace belongs to --method join-token; an x509pop agent replaces itself")
    return HostCertificate(
        install_path("--x509pop-cert", args.x509pop_cert),
        install_path("--x509pop-key", args.x509pop_key),
        install_path("--x509pop-chain", args.x509pop_chain) if args.x509pop_chain else None,
    )


def _dns_name(option: str, value: str) -> str:
    try:
        return check_dns_name(value)
    except InvalidArgument as err:
        raise InvalidArgument(f"{option}: {err}") from None


def _enrollment(args: argparse.Namespace) -> Enrollment:
    host = _dns_name("--host", args.host)
    if host.startswith("*"):
        raise InvalidArgument(f"--host {args.host!r}: name one host, not a wildcard")
    try:
        parse_duration(args.token_ttl)  # refused before the CA is asked for anything
    except InvalidArgument as err:
        raise InvalidArgument(f"--token-ttl: {err}") from None
    paths = InstallPaths(
        install_path("--config-dir", args.config_dir),
        install_path("--state-dir", args.state_dir),
        install_path("--runtime-dir", args.runtime_dir),
        install_path("--agent-bin", args.agent_bin),
    )
    return Enrollment(
        host=host,
        trust_domain=TrustDomain.parse(args.trust_domain),
        server_address=ca_address("--server-address", args.server_address),
        attestation_address=ca_address("--attestation-address", args.attestation_address),
        server_name=_dns_name("--server-name", args.server_name),
        method=Method(args.method),
        paths=paths,
        user=service_user(args.user),
        certificate=_certificate(args),
    )


def _x509pop_agent_id(args: argparse.Namespace, enrollment: Enrollment) -> SpiffeId | None:
    """The agent ID the host's certificate gets under ``--rules`` (printed as the check goes); None
    without rules. Raises FailedPrecondition when the certificate maps to no SPIFFE ID."""
    if not args.rules or enrollment.certificate is None:
        return None
    paths = [args.check_cert or str(enrollment.certificate.cert_file)]
    if not args.check_cert and enrollment.certificate.chain_file is not None:
        paths.append(str(enrollment.certificate.chain_file))
    chain = [cert for path in paths for cert in load_certificates(read_pki_file(Path(path), "certificate"), path)]
    report = explain_certificate(
        chain, Path(args.rules), enrollment.trust_domain, args.anchor, [Path(p) for p in args.crl]
    )
    for line in report.lines():
        print(f"x509pop check: {line}")
    if report.chain_refusal is not None:
        raise FailedPrecondition(f"the CA would refuse {paths[0]}: {report.chain_refusal}")
    mapped = report.explanation.mapped
    if mapped is None:
        raise FailedPrecondition(
            f"{paths[0]} maps to no SPIFFE ID under {args.rules} (see the check above), so the CA would refuse "
            "this host; fix the rules (and give --anchor for rules that name a trust anchor), or enroll the host "
            "with --method join-token"
        )
    return agent_id(enrollment.trust_domain, mapped.spiffe_id)


def cmd_enroll(args: argparse.Namespace) -> int:
    enrollment = _enrollment(args)
    expected_id = _x509pop_agent_id(args, enrollment)
    ca = _ca_command(args)
    files = [
        OutputFile(CONFIG_FILE, render_agent_config(enrollment).encode()),
        OutputFile(BUNDLE_FILE, _bundle(args, ca)),
        OutputFile(UNIT_NAME, render_systemd_unit(enrollment).encode()),
    ]
    stale = [TOKEN_FILE]
    note = "register its workloads with that --parent-id"
    if expected_id is None:
        note = "its agent ID follows from the CA's mapping rules (check it with --rules)"
    if enrollment.method is Method.JOIN_TOKEN:  # last: a failure before it spends no token
        token = ca.join_token(enrollment.host, args.token_ttl, replace=args.replace)
        if not token.agent_id.is_member_of(enrollment.trust_domain):
            raise FailedPrecondition(
                f"the CA issued a token for {token.agent_id}, outside --trust-domain {enrollment.trust_domain}; "
                "pass the CA's trust domain"
            )
        files.append(OutputFile(TOKEN_FILE, f"{token.token}\n".encode(), SECRET_MODE))
        stale = []
        expected_id = token.agent_id
        note = (
            f"the join token works once, until {token.expires_at}; register the host's workloads with that --parent-id"
        )
    written = write_output(Path(args.out), files, stale)
    print(f"wrote {', '.join(str(path) for path in written)}")
    who = "" if expected_id is None else f" as {expected_id}"
    print(f"the agent of {enrollment.host} will attest{who}; {note}")
    return 0


def add_enroll_command(commands: Any) -> None:
    """Register ``enroll`` on the ``trustmesh-bridge`` parser's subcommands."""
    enroll = commands.add_parser(
        "enroll",
        help="write a brownfield host's agent config, trust bundle, join token and systemd unit",
        description="Write what config management installs on a host so that its agent joins the trust domain "
        "(docs/vm-onboarding.md).",
    )
    enroll.add_argument("--host", required=True, help="the host's name (a join token's agent ID ends with it)")
    enroll.add_argument(
        "--method",
        choices=[method.value for method in Method],
        default=Method.X509POP.value,
        help="how the agent proves itself at first contact (default: %(default)s)",
    )
    enroll.add_argument("--out", required=True, help="directory to write the files into (made 0700 if missing)")
    enroll.add_argument("--trust-domain", required=True, help="the CA's trust domain, e.g. example.org")
    enroll.add_argument("--server-address", required=True, help="the CA's node API as the host reaches it, host:port")
    enroll.add_argument("--attestation-address", required=True, help="the CA's attestation listener, host:port")
    enroll.add_argument(
        "--server-name", default="trustmesh-ca", help="the CA's server.server_name (default: %(default)s)"
    )
    enroll.add_argument("--trust-bundle", help="PEM file of the CA's roots (default: ask the CA for its bundle)")

    token = enroll.add_argument_group("join-token")
    token.add_argument("--token-ttl", default="1h", help="how long the token stays usable (default: %(default)s)")
    token.add_argument("--replace", action="store_true", help="the host replaces an attested agent of that name")

    x509pop = enroll.add_argument_group(
        "x509pop", "paths on the host; the agent reads them through systemd credentials"
    )
    x509pop.add_argument("--x509pop-cert", help="the host's enterprise certificate (PEM, may hold its chain)")
    x509pop.add_argument("--x509pop-key", help="its private key (PEM)")
    x509pop.add_argument("--x509pop-chain", help="intermediates (PEM), when the certificate file holds only the leaf")
    x509pop.add_argument("--rules", help="check that the certificate maps under these mapping rules (TOML or JSON)")
    x509pop.add_argument(
        "--anchor", action="append", default=[], help="NAME=FILE: verify the chain to it (with --rules)"
    )
    x509pop.add_argument("--crl", action="append", default=[], help="enterprise CRL file (with --anchor)")
    x509pop.add_argument("--check-cert", help="a local copy of the certificate for --rules (default: --x509pop-cert)")

    paths = enroll.add_argument_group("install paths", "where things go on the host")
    paths.add_argument(
        "--config-dir", default="/etc/trustmesh", help="agent.toml, bundle.pem, join-token (%(default)s)"
    )
    paths.add_argument("--state-dir", default="/var/lib/trustmesh-agent", help="the agent's data_dir (%(default)s)")
    paths.add_argument("--runtime-dir", default="/run/trustmesh-agent", help="the agent's sockets (%(default)s)")
    paths.add_argument("--agent-bin", default="/usr/local/bin/trustmesh-agent", help="trustmesh-agent (%(default)s)")
    paths.add_argument("--user", default="trustmesh-agent", help="system user the agent runs as (%(default)s)")

    ca = enroll.add_argument_group(
        "CA admin API",
        "how trustmesh-ca reaches the CA for the bundle and the token; a remote CA's credentials come from "
        "TRUSTMESH_TOKEN_FILE, TRUSTMESH_CERT_FILE/TRUSTMESH_KEY_FILE and TRUSTMESH_BUNDLE_FILE (docs/admin-api.md)",
    )
    ca.add_argument("--ca-config", help="the CA's config file, for its admin socket (default: $TRUSTMESH_CONFIG)")
    ca.add_argument("--ca-socket", help="the CA's admin socket")
    ca.add_argument("--ca-server", help="https://host:port of the CA's admin API (default: $TRUSTMESH_SERVER)")
    enroll.set_defaults(func=cmd_enroll)
