"""nnU-Net's environment: where its folders are, and how the stock commands find our trainers.

nnU-Net 2.8 looks up a trainer named with ``-tr`` in its own package first, then in every folder listed in the
``nnUNet_extTrainer`` environment variable. It imports the modules of such a folder as *top-level* names and drops
them from ``sys.modules`` afterwards. So we point it at :data:`TRAINER_SEARCH_PATH`, a folder holding one uniquely
named shim module that imports our trainers by absolute import: the class nnU-Net finds is then the very object
``nnunet_ext.trainers.<module>.<Trainer>``, which keeps checkpoints and pickled trainers consistent.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

TRAINER_SEARCH_PATH = str(Path(__file__).resolve().parents[1] / "trainers" / "nnunet_search_path")
NNUNET_FOLDER_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


class EnvironmentNotReady(RuntimeError):
    """nnU-Net's environment variables are missing or do not let it find our trainers."""


def ext_trainer_path_value(current: str | None = None) -> str:
    """Value of ``nnUNet_extTrainer`` with our search path first, keeping any folders the user already listed."""
    current = os.environ.get("nnUNet_extTrainer", "") if current is None else current
    others = [p for p in current.split(os.pathsep) if p.strip() and os.path.abspath(p) != TRAINER_SEARCH_PATH]
    return os.pathsep.join([TRAINER_SEARCH_PATH, *others])


def nnunet_environment(base_folder: str | os.PathLike | None = None, base_env: dict | None = None) -> dict[str, str]:
    """A copy of the environment with ``nnUNet_extTrainer`` set, and nnU-Net's three folders under ``base_folder``.

    Parameters
    ----------
    base_folder : path, optional
        If given, ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` become its sub-folders
        ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` (created). Otherwise they are kept as set.
    base_env : dict, optional
        Environment to start from (default: ``os.environ``).
    """
    env = dict(os.environ if base_env is None else base_env)
    env["nnUNet_extTrainer"] = ext_trainer_path_value(env.get("nnUNet_extTrainer", ""))
    if base_folder is not None:
        base = Path(base_folder).resolve()
        for name in NNUNET_FOLDER_VARIABLES:
            (base / name).mkdir(parents=True, exist_ok=True)
            env[name] = str(base / name)
    return env


def check_environment(need_folders: bool = False, env: dict | None = None) -> None:
    """Raise :class:`EnvironmentNotReady` with the line to run when nnU-Net would not find our trainers."""
    env = os.environ if env is None else env
    problems = []
    listed = [os.path.abspath(p) for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    if TRAINER_SEARCH_PATH not in listed:
        problems.append(
            "nnUNet_extTrainer does not list nnunet-ext's trainer folder, so 'nnUNetv2_train ... -tr <nnunet-ext "
            "trainer>' and 'nnUNetv2_predict' cannot find our trainers")
    missing_folders = [name for name in NNUNET_FOLDER_VARIABLES if need_folders and not env.get(name)]
    problems += [f"{name} is not set" for name in missing_folders]
    if problems:
        # plain 'nnunet-ext env' sets only nnUNet_extTrainer: missing folders need --base (or exports of their own)
        fix = "eval \"$(nnunet-ext env --base DIR)\"" if missing_folders else "eval \"$(nnunet-ext env)\""
        where = ("\nwhere DIR is the (existing) folder to hold nnUNet_raw, nnUNet_preprocessed and nnUNet_results "
                 "(or export those three yourself)" if missing_folders else "")
        raise EnvironmentNotReady(
            "; ".join(problems) + f".\nFix it in this shell with:\n    {fix}{where}\n"
            "(add that line to ~/.bashrc to make it permanent; 'nnunet-ext env --help' for options)")


def export_lines(base_folder: str | os.PathLike | None = None) -> str:
    """Shell ``export`` lines that set up nnU-Net for nnunet-ext."""
    env = nnunet_environment(base_folder, base_env={"nnUNet_extTrainer": os.environ.get("nnUNet_extTrainer", "")})
    names = ["nnUNet_extTrainer"] + (list(NNUNET_FOLDER_VARIABLES) if base_folder is not None else [])
    return "\n".join(f"export {name}={shlex.quote(env[name])}" for name in names)


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "env", help="print the export lines that let nnUNetv2_train/nnUNetv2_predict find our trainers",
        description="Print shell 'export' lines for nnU-Net. Use as: eval \"$(nnunet-ext env)\". nnU-Net finds "
        "trainers outside its own package only in folders listed in nnUNet_extTrainer; this puts nnunet-ext's "
        "there (keeping folders you already listed).")
    parser.add_argument("--base", metavar="DIR",
                        help="also set nnUNet_raw, nnUNet_preprocessed and nnUNet_results to sub-folders of DIR "
                             "(created, and DIR too if its parent exists; what was created is said on stderr)")
    parser.add_argument("--check", action="store_true",
                        help="do not print exports; exit 1 with an explanation if the current environment would "
                             "not find our trainers or lacks nnU-Net's folders")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    if args.check:
        try:
            check_environment(need_folders=True)
        except EnvironmentNotReady as error:
            print(f"nnunet-ext env: {error}", file=sys.stderr)
            return 1
        print("nnU-Net environment is ready: our trainers are found and nnU-Net's folders are set.")
        return 0
    created = []
    if args.base is not None:
        base = Path(args.base).expanduser().resolve()
        if not base.is_dir():
            if base.exists():
                raise ValueError(f"--base {args.base}: {base} exists but is not a folder")
            if not base.parent.is_dir():  # a typo would otherwise silently create a whole tree
                raise ValueError(f"--base {args.base}: its parent folder {base.parent} does not exist; create it "
                                 f"first or correct the path (nothing was created)")
        created = [base / name for name in ("", *NNUNET_FOLDER_VARIABLES) if not (base / name).exists()]
    print(export_lines(args.base))
    for folder in created:  # on stderr: stdout is meant for eval
        print(f"nnunet-ext env: created {folder}", file=sys.stderr)
    return 0
