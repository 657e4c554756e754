"""`cemsplit` command: the roles, the demo, offline attacks, reports, sweeps and tools."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cemsplit.shared.config import ConfigError, add_config_flags, config_from_args
from cemsplit.shared.logs import configure_logging

log = logging.getLogger("cemsplit")

DESCRIPTION = """Split learning with CEM defences and model-inversion attacks over gRPC.

Every role reads one YAML config (--config); flags override it. Units are given in each
option's help. Run `cemsplit demo --out DIR` to train on the embedded MNIST digits with
server, client and attacker as three local processes. `cemsplit attack` runs the threat
models on a recorded traffic log alone; `cemsplit traffic inspect DIR` summarises a log."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity (default: INFO)")
    parser.add_argument(
        "--threads", type=int, default=0, metavar="N", help="torch CPU threads per process; 0 keeps torch's default (default: 0)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cemsplit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run server, attacker and client locally and write a report")
    demo.add_argument("--out", type=Path, required=True, help="run directory to create (required); it must not hold an earlier run")
    _add_common(demo)
    add_config_flags(demo, "demo")

    for role, summary in (
        ("server", "serve the model after the cut (gRPC, default port 50051)"),
        ("client", "train the client half against a server"),
        ("attacker", "record mirrored traffic and run inversion attacks (gRPC, default port 50052)"),
    ):
        sub = commands.add_parser(role, help=summary, description=summary)
        sub.add_argument("--run-dir", type=Path, default=Path("runs") / role, help=f"directory for this role's outputs (default: runs/{role})")
        _add_common(sub)
        add_config_flags(sub, role)

    from cemsplit.cli.attack import add_attack_arguments

    summary = "run threat models on a recorded traffic log, with no server or client running"
    attack = commands.add_parser("attack", help=summary, description=summary + ". Pass the run's config.yaml for its data settings.")
    add_attack_arguments(attack)
    _add_common(attack)
    add_config_flags(attack, "attack")

    traffic = commands.add_parser("traffic", help="tools for traffic log directories", description="tools for traffic log directories")
    traffic_commands = traffic.add_subparsers(dest="traffic_command", required=True, metavar="TOOL")
    inspect = traffic_commands.add_parser(
        "inspect", help="print sessions, step ranges, shapes, dtypes and record counts", description="summarise a traffic log directory"
    )
    inspect.add_argument("directory", type=Path, metavar="DIR", help="traffic log directory")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity (default: WARNING)")

    sweep = commands.add_parser("sweep", help="run every combination of a grid of settings and compare defences")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a config key and its values (repeatable), for example noise_std=0.01,0.05")
    sweep.add_argument("--out", type=Path, required=True, help="sweep directory (required); an existing one is resumed")
    sweep.add_argument("--backend", choices=["local", "ray"], default="local", help="where runs execute (default: local)")
    sweep.add_argument("--parallel", type=int, default=1, help="local backend: runs at a time (default: 1)")
    sweep.add_argument("--address", help="ray backend: address of the Ray head, for example 10.0.0.5:6379")
    sweep.add_argument("--cpus-per-run", type=float, default=1.0, help="ray backend: CPUs reserved per run (default: 1.0)")
    _add_common(sweep)
    add_config_flags(sweep, "demo")

    certs = commands.add_parser("certs", help="create a development CA with server and client certificates")
    certs.add_argument("directory", type=Path, help="directory for ca.pem, server.pem, client.pem and their keys")
    certs.add_argument(
        "--host", action="append", default=[], metavar="NAME",
        help="DNS name or IP address the server certificate is valid for, besides localhost, 127.0.0.1 and ::1 (repeatable)",
    )
    certs.add_argument("--days", type=int, default=365, help="validity of the certificates in days (default: 365)")
    _add_common(certs)

    report_summary = "have a running attacker attack a finished client run and write report.json"
    report = commands.add_parser("report", help=report_summary, description=report_summary)
    report.add_argument(
        "--run-dir", type=Path, required=True, help="run directory that contains the client's outputs in client/; the attacker must see it at the same path"
    )
    report.add_argument("--attacker", required=True, metavar="HOST:PORT", help="address of the attacker that recorded the run's traffic")
    _add_common(report)
    add_config_flags(report, "report")

    health_summary = "check a server or attacker through gRPC health checking; exit 0 when SERVING"
    health = commands.add_parser("health", help=health_summary, description=health_summary)
    health.add_argument("--address", required=True, metavar="HOST:PORT", help="address of the server or attacker to check")
    health.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="service to check, for example cemsplit.v1.SplitLearning or cemsplit.v1.Attacker (default: the whole process)",
    )
    health.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="deadline of the check in seconds (default: 5)")
    health.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity (default: WARNING)")
    add_config_flags(health, "health")
    return parser


def _inspect_traffic(args: argparse.Namespace) -> int:
    import json

    from cemsplit.attacker.traffic_summary import format_summary, summarize_log
    from cemsplit.shared.traffic_log import TrafficLogError

    try:
        summary = summarize_log(args.directory)
    except (FileNotFoundError, TrafficLogError) as error:
        log.error("%s", error)
        return 1
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _create_certs(args: argparse.Namespace) -> int:
    from cemsplit.shared.certs import create_dev_pki

    if args.days < 1:
        print(f"cemsplit certs: --days {args.days} must be at least 1", file=sys.stderr)
        return 2
    try:
        paths = create_dev_pki(args.directory, args.host, args.days)
    except FileExistsError as error:
        print(f"cemsplit certs: {error}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"wrote {path}")
    print("Servers: --tls-cert server.pem --tls-key server-key.pem; clients: --tls-ca ca.pem "
          "(mutual TLS: add --tls-client-cert client.pem --tls-client-key client-key.pem, and --require-client-cert true on servers)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Report unknown flags with the subcommand's usage rather than the top-level one.
        commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    configure_logging(args.command, args.log_level)
    if args.command == "certs":
        return _create_certs(args)
    if args.command == "traffic":
        return _inspect_traffic(args)
    try:
        config = config_from_args(args)
    except ConfigError as error:
        print(f"cemsplit {args.command}: invalid configuration\n{error}", file=sys.stderr)
        return 2

    if args.command == "health":
        if args.timeout <= 0:
            print(f"cemsplit health: --timeout {args.timeout} must be positive, for example 5", file=sys.stderr)
            return 2
        from cemsplit.cli.health import run_health

        return run_health(config, args.address, args.service, args.timeout)

    if args.threads < 0:
        print(f"cemsplit {args.command}: --threads {args.threads} is negative; use 0 for torch's default", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from cemsplit.attacker.inputs import AttackInputError
    from cemsplit.attacker.traffic import TrafficError
    from cemsplit.cli.reporter import ReportError
    from cemsplit.shared.errors import USER_ERRORS

    if args.command in ("demo", "sweep"):
        from cemsplit.cli.processes import interrupt_on_sigterm

        interrupt_on_sigterm()
    try:
        if args.command == "demo":
            from cemsplit.cli.demo import run_demo

            return run_demo(config, args.out, threads=args.threads)
        if args.command == "sweep":
            from cemsplit.cli.sweep import run_sweep

            if args.parallel < 1:
                raise ConfigError(f"--parallel {args.parallel} must be at least 1")
            return run_sweep(config, args.grid, args.out, args.backend, args.parallel, args.address, args.cpus_per_run, args.threads)
        if args.command == "server":
            from cemsplit.server.main import serve

            return serve(config, args.run_dir)
        if args.command == "attacker":
            from cemsplit.attacker.main import serve

            return serve(config, args.run_dir)
        if args.command == "client":
            from cemsplit.client.main import run

            return run(config, args.run_dir)
        if args.command == "attack":
            from cemsplit.cli.attack import run_offline_attack

            return run_offline_attack(config, args)
        if args.command == "report":
            from cemsplit.cli.reporter import run_report

            return run_report(config, args.run_dir, args.attacker)
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    except (*USER_ERRORS, AttackInputError, ReportError, TrafficError) as error:
        log.error("%s", error)
        return 1
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
