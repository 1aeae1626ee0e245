"""The `crawlcoin` command line: one Typer app, one subcommand per role."""
