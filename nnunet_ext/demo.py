def register_cli(subparsers) -> None:
    pass
