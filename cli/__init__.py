"""The `cemsplit` command line: one subcommand per role, and the local demo that runs all three."""
