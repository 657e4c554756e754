"""`cemsplit` command: server, client, attacker, demo, report and health subcommands."""

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
server, client and attacker as three local processes."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity (default: INFO)")
    parser.add_argument(
        "--threads", type=int, default=0, metavar="N", help="torch CPU threads per process; 0 keeps torch's default (default: 0)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cemsplit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run server, attacker and client locally and write a report")
    demo.add_argument("--out", type=Path, required=True, help="run directory to create; it must not hold an earlier run")
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


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.command, args.log_level)
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

    from cemsplit.cli.reporter import ReportError
    from cemsplit.shared.errors import USER_ERRORS

    try:
        if args.command == "demo":
            from cemsplit.cli.demo import run_demo

            return run_demo(config, args.out, threads=args.threads)
        if args.command == "server":
            from cemsplit.server.main import serve

            return serve(config, args.run_dir)
        if args.command == "attacker":
            from cemsplit.attacker.main import serve

            return serve(config, args.run_dir)
        if args.command == "client":
            from cemsplit.client.main import run

            return run(config, args.run_dir)
        if args.command == "report":
            from cemsplit.cli.reporter import run_report

            return run_report(config, args.run_dir, args.attacker)
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    except (ReportError, *USER_ERRORS) as error:
        log.error("%s", error)
        return 1
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
