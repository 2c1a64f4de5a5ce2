"""Command-line registration for nnunet_ext.morphometrics (filled in by its modules)."""


def register_cli(subparsers) -> None:
    pass
