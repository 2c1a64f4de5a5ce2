"""Command-line registration for nnunet_ext.trainers (filled in by its modules)."""


def register_cli(subparsers) -> None:
    pass
