"""Loading a trained nnU-Net model for ``nnunet-ext segment``, and predicting one image that fits in memory.

The model is loaded by nnU-Net's own ``nnUNetPredictor.initialize_from_trained_model_folder`` with folds and
checkpoint chosen as in ``nnUNetv2_predict`` (default: every ``fold_*`` holding the checkpoint). Images that fit in
memory go through nnU-Net's full pipeline (``predict_single_npy_array``: cropping to the nonzero region,
normalisation, resampling, sliding window, export). :class:`BlockPredictor` additionally lets
:mod:`nnunet_ext.segmentation.slide_prediction` hand nnU-Net's sliding window the tiles of one block of a larger grid.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_ext import __version__
from nnunet_ext.nnunet.environment import ext_trainer_path_value

# nnU-Net's NaturalImage2DIO gives every 2D image this spacing; 2D models trained on PNGs expect it.
NATURAL_IMAGE_SPACING = (999.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelSpec:
    """Which trained model to load and how to run it; small and picklable, so Dask tasks carry it to workers.

    Parameters
    ----------
    model_folder : str
        nnU-Net trained-model folder (``<Trainer>__<Plans>__<configuration>``, holding ``plans.json``,
        ``dataset.json`` and ``fold_*``).
    folds : tuple of str, optional
        Folds to ensemble (``"0"``, ``"all"``, ...). Default: every ``fold_*`` holding ``checkpoint``, as
        ``nnUNetv2_predict_from_modelfolder``.
    checkpoint : str
        Checkpoint file name in each fold folder (``-chk`` of ``nnUNetv2_predict``).
    device : str
        ``"cpu"``, ``"cuda"`` (one GPU per Dask worker when several are visible) or ``"cuda:N"``.
    tile_step_size : float
        Sliding-window step as a fraction of the patch (``-step_size``, nnU-Net's default 0.5).
    use_mirroring : bool
        Test-time mirroring (``--disable_tta`` turns it off).
    threads : int, optional
        Torch threads for CPU prediction (default: torch's own choice).
    """

    model_folder: str
    folds: tuple[str, ...] | None = None
    checkpoint: str = "checkpoint_final.pth"
    device: str = "cpu"
    tile_step_size: float = 0.5
    use_mirroring: bool = True
    threads: int | None = None

    def __post_init__(self):
        if not 0 < self.tile_step_size <= 1:
            raise ValueError(f"tile step size must be in (0, 1], got {self.tile_step_size}")
        if self.folds is not None:
            object.__setattr__(self, "folds", tuple(str(f) for f in self.folds))


def resolve_model_folder(path: str | os.PathLike, folds: Sequence[int | str] | None = None,
                         checkpoint: str = "checkpoint_final.pth") -> tuple[str, tuple[str, ...]]:
    """The trained-model folder and the folds to use, with errors that say what is missing.

    A fold folder (``.../fold_0``) is accepted too: its parent is the model folder and the fold is used alone.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: model folder not found")
    if path.name.startswith("fold_") and not (path / "plans.json").is_file() and (path.parent / "plans.json").is_file():
        if folds is not None and [str(f) for f in folds] != [path.name[5:]]:
            raise ValueError(f"{path}: a fold folder, but folds {list(folds)} were asked for; give the model folder "
                             f"{path.parent}")
        path, folds = path.parent, [path.name[5:]]
    for required in ("plans.json", "dataset.json"):
        if not (path / required).is_file():
            raise FileNotFoundError(f"{path}: no {required}; expected an nnU-Net trained-model folder "
                                    f"(<Trainer>__<Plans>__<configuration> under nnUNet_results)")
    if folds is None:
        found = sorted(p.name[5:] for p in path.glob("fold_*") if (p / checkpoint).is_file())
        folds = [f for f in found if f != "all"] or found  # nnU-Net ignores fold_all unless it is all there is
        if not folds:
            raise FileNotFoundError(f"{path}: no fold_*/{checkpoint}; train the model first or name another "
                                    f"checkpoint (-chk)")
    for fold in folds:
        if not (path / f"fold_{fold}" / checkpoint).is_file():
            raise FileNotFoundError(f"{path / f'fold_{fold}' / checkpoint}: checkpoint not found")
    return str(path), tuple(str(f) for f in folds)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_cpu_threads() -> int:
    """Torch CPU threads for ``segment`` when ``--threads`` is not given: ``OMP_NUM_THREADS`` when set (as the CPU
    trainers honour it), else the cores this process may use minus those already busy (the 1-minute load average),
    at least 1. Torch's own default (one thread per core) oversubscribes a loaded machine: a 1024^2 image took 58 s
    with it on a busy 2-core machine against 4.6 s on one thread, with the same labels."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    cores = available_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def _nnunet_fold(fold: str) -> int | str:
    return fold if fold == "all" else int(fold)


@functools.lru_cache(maxsize=None)
def block_predictor_class():
    """nnU-Net's predictor with block tiling (built on first use, so that importing this module stays light)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class _BlockPredictor(nnUNetPredictor):
        """nnU-Net's predictor whose sliding window can be told which tiles to run.

        Inside :meth:`tiles`, ``predict_logits_from_preprocessed_data`` runs nnU-Net's own sliding window
        (Gaussian weighting, mirroring, fold ensembling) over the given tile starts instead of spreading tiles
        over the block by itself: blocks of a slide then reuse exactly the tiles of the whole slide's grid, which
        makes block-wise prediction identical to predicting the slide in one piece.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._tile_starts = None
            # one prediction at a time per model: nnU-Net swaps fold weights into the one network it holds
            self.lock = threading.RLock()

        @contextlib.contextmanager
        def tiles(self, starts_y: Sequence[int], starts_x: Sequence[int]):
            with self.lock:
                self._tile_starts = (list(starts_y), list(starts_x))
                try:
                    yield self
                finally:
                    self._tile_starts = None

        def _internal_get_sliding_window_slicers(self, image_size):
            if self._tile_starts is None:
                return super()._internal_get_sliding_window_slicers(image_size)
            patch = self.configuration_manager.patch_size
            starts_y, starts_x = self._tile_starts
            if len(image_size) != 3 or len(patch) != 2:
                raise ValueError("block-wise prediction handles 2D models on 2D images")
            # same order as nnU-Net's own loop (slice, rows, columns), so fp16 sums run in the same order
            return [(slice(None), d, slice(sy, sy + patch[0]), slice(sx, sx + patch[1]))
                    for d in range(image_size[0]) for sy in starts_y for sx in starts_x]

    return _BlockPredictor


_LOAD_LOCK = threading.Lock()  # one load at a time: redirect_stdout swaps the process's one sys.stdout


def load_predictor(spec: ModelSpec):
    """Load the model with nnU-Net's ``initialize_from_trained_model_folder``; returns a block-capable predictor.

    Loads are serialised (threads borrowing model copies may load at once): ``contextlib.redirect_stdout`` swaps
    the process-wide ``sys.stdout``, and interleaved swaps would leave it pointing at a closed file.
    """
    with _LOAD_LOCK:
        return _load_predictor(spec)


def _load_predictor(spec: ModelSpec):
    import torch

    os.environ["nnUNet_extTrainer"] = ext_trainer_path_value()  # so that nnU-Net finds our trainers
    model_folder, folds = resolve_model_folder(spec.model_folder, spec.folds, spec.checkpoint)
    device = torch.device(_worker_device(spec.device))
    if device.type == "cpu" and spec.threads:
        torch.set_num_threads(int(spec.threads))
    dataset_json = _read_model_json(Path(model_folder) / "dataset.json")
    _read_model_json(Path(model_folder) / "plans.json")
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # nnU-Net prints as it searches
        predictor = block_predictor_class()(
            tile_step_size=spec.tile_step_size, use_gaussian=True, use_mirroring=spec.use_mirroring,
            perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
            verbose_preprocessing=False, allow_tqdm=False)
        try:
            predictor.initialize_from_trained_model_folder(model_folder, [_nnunet_fold(f) for f in folds],
                                                           spec.checkpoint)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as error:  # noqa: BLE001 - torch and nnU-Net raise many types for a broken model
            raise _model_error(model_folder, folds, spec.checkpoint, dataset_json, error) from None
    check_2d_model(predictor, model_folder)
    return predictor


def _read_model_json(path: Path) -> dict:
    """A model folder's ``plans.json`` or ``dataset.json`` as a dict, or ``ValueError`` naming the file."""
    import json

    try:
        content = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); is the model folder complete?") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(content).__name__}")
    return content


def _model_error(model_folder: str, folds, checkpoint: str, dataset_json: dict, error: Exception) -> ValueError:
    """Say which file of a model folder is broken when nnU-Net cannot load it: a checkpoint that is not a whole
    torch file (truncated copy), or weights that do not fit the network that plans.json and dataset.json describe
    (e.g. dataset.json's channel_names or labels changed)."""
    import zipfile

    checkpoints = [Path(model_folder) / f"fold_{fold}" / checkpoint for fold in folds]
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    broken = [path for path in checkpoints if not zipfile.is_zipfile(path)]
    if broken:
        return ValueError(f"{', '.join(map(str, broken))}: not a complete torch checkpoint (truncated or damaged "
                          f"copy?): {type(error).__name__}: {detail}")
    if "size mismatch" in str(error) or "state_dict" in str(error):
        channels = dataset_json.get("channel_names", dataset_json.get("modality", {}))
        labels = dataset_json.get("labels", {})
        return ValueError(f"{', '.join(map(str, checkpoints))}: the weights do not fit the network that "
                          f"{model_folder}/plans.json and dataset.json describe ({len(channels)} input channel(s) "
                          f"from channel_names, {len(labels)} labels); were they edited, or the checkpoint copied "
                          f"from another model? ({detail})")
    return ValueError(f"{model_folder}: nnU-Net cannot load this model ({', '.join(map(str, checkpoints))}): "
                      f"{type(error).__name__}: {detail}")


def _worker_device(device: str) -> str:
    """``cuda`` inside the N-th Dask worker of a machine means its N-th GPU: one worker per GPU."""
    if device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise ValueError("device 'cuda' asked for, but torch sees no GPU; use --device cpu")
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) % count if str(name).isdigit() else 0
    except (ImportError, ValueError):
        index = 0
    return f"cuda:{index}"


def check_2d_model(predictor, model_folder: str | os.PathLike = "model") -> None:
    """``segment`` handles 2D models with one grey input channel; say so clearly otherwise."""
    patch = predictor.configuration_manager.patch_size
    if len(patch) != 2:
        raise ValueError(f"{model_folder}: a {len(patch)}D configuration; 'segment' runs 2D models on 2D images")
    channels = predictor.dataset_json.get("channel_names", predictor.dataset_json.get("modality", {}))
    if len(channels) != 1:
        raise ValueError(f"{model_folder}: the model takes {len(channels)} input channels; 'segment' feeds one "
                         f"grey channel (as nnunet-ext's dataset converters write)")


_PREDICTORS: dict = {}
_IDLE_COPIES: dict = {}  # spec -> predictors of that model not predicting now (see borrowed_predictor)
_PREDICTORS_LOCK = threading.Lock()


def _cache_key(spec: ModelSpec) -> ModelSpec:
    model_folder, folds = resolve_model_folder(spec.model_folder, spec.folds, spec.checkpoint)
    return replace(spec, model_folder=model_folder, folds=folds, threads=None)


def cached_predictor(spec: ModelSpec):
    """The predictor for ``spec`` in this process, loaded once (each Dask worker process loads the model once).

    ``spec.threads`` sets torch's threads but does not make another model: specs that differ only in threads share
    the predictor.
    """
    key = _cache_key(spec)
    with _PREDICTORS_LOCK:
        if key not in _PREDICTORS:
            _PREDICTORS.clear()  # one model in memory at a time
            _IDLE_COPIES.clear()
            _PREDICTORS[key] = load_predictor(replace(key, threads=spec.threads))
            _IDLE_COPIES[key] = [_PREDICTORS[key]]
        predictor = _PREDICTORS[key]
    if spec.threads and predictor.device.type == "cpu":
        import torch

        # sets the calling thread's count (and the default of threads started later; segment_slide restores it)
        torch.set_num_threads(int(spec.threads))
    return predictor


@contextlib.contextmanager
def borrowed_predictor(spec: ModelSpec):
    """A predictor of ``spec`` for one task at a time, so that tasks in threads of one process predict at once.

    On the CPU, a task that finds every loaded copy busy loads another one (once: copies are kept for later tasks),
    so N threads predict N blocks in parallel, each with its own torch threads; that uses small cores far better than
    one prediction spreading thin layers over all of them. On a GPU, tasks share one predictor and predict one after
    the other (nnU-Net swaps fold weights into the one network it holds, so a predictor serves one task at a time).
    """
    shared = cached_predictor(spec)
    key = _cache_key(spec)
    if shared.device.type != "cpu":
        with shared.lock:
            yield shared
        return
    with _PREDICTORS_LOCK:
        idle = _IDLE_COPIES.setdefault(key, [])
        predictor = idle.pop() if idle else None
    if predictor is None:
        predictor = load_predictor(key)  # a copy for this thread: the model read once more, from the same files
    try:
        with predictor.lock:  # predict_image may use the shared copy from another thread
            yield predictor
    finally:
        with _PREDICTORS_LOCK:
            if _PREDICTORS.get(key) is not None:  # not if another model replaced this one meanwhile
                _IDLE_COPIES.setdefault(key, []).append(predictor)


def clear_predictor_cache() -> None:
    with _PREDICTORS_LOCK:
        _PREDICTORS.clear()
        _IDLE_COPIES.clear()


@dataclass
class ModelInfo:
    """What the outputs' metadata records about the model."""

    model_folder: str
    trainer: str
    plans: str
    configuration: str
    folds: list[str]
    checkpoint: str
    tile_step_size: float
    use_mirroring: bool
    labels: dict
    patch_size: list[int]
    nnunet_ext_version: str = ""
    nnunetv2_version: str = ""
    checkpoint_files: dict = field(default_factory=dict)  # fold -> size and modification time, to tell models apart

    def as_dict(self) -> dict:
        return asdict(self)


def model_info(predictor, spec: ModelSpec) -> ModelInfo:
    """Metadata of a loaded model for the outputs: folder, trainer, plans, configuration, folds, checkpoint,
    versions."""
    from importlib.metadata import version

    model_folder, folds = resolve_model_folder(spec.model_folder, spec.folds, spec.checkpoint)
    files = {}
    for fold in folds:
        stat = (Path(model_folder) / f"fold_{fold}" / spec.checkpoint).stat()
        files[fold] = {"bytes": stat.st_size, "modified": stat.st_mtime}
    return ModelInfo(
        model_folder=model_folder, trainer=predictor.trainer_name, plans=predictor.plans_manager.plans_name,
        configuration=Path(model_folder).name.rsplit("__", 1)[-1], folds=list(folds), checkpoint=spec.checkpoint,
        tile_step_size=spec.tile_step_size, use_mirroring=spec.use_mirroring,
        labels=dict(predictor.dataset_json["labels"]), patch_size=[int(p) for p in
                                                                   predictor.configuration_manager.patch_size],
        nnunet_ext_version=__version__, nnunetv2_version=version("nnunetv2"), checkpoint_files=files)


def axon_myelin_values(labels: dict) -> tuple[int, int] | None:
    """(myelin, axon) label values from a ``dataset.json`` ``labels`` mapping, or None if it has no such classes."""
    myelin, axon = labels.get("myelin"), labels.get("axon")
    if isinstance(myelin, int) and isinstance(axon, int):
        return myelin, axon
    return None


def uaxon_value(labels: dict) -> int | None:
    """The ``unmyelinated axon`` label value of a model trained with ``convert bids --uaxon label``, or None."""
    value = labels.get("unmyelinated axon")
    return value if isinstance(value, int) else None


def predict_image(predictor, image: np.ndarray, return_probabilities: bool = False):
    """Predict one 2D grey image in one piece with nnU-Net's own pipeline.

    Parameters
    ----------
    predictor : nnUNetPredictor
        From :func:`load_predictor`.
    image : ndarray, shape (H, W)
        Grey image (any integer or float type).
    return_probabilities : bool
        Also return the class probabilities (float32, shape (C, H, W)), as ``nnUNetv2_predict --save_probabilities``.

    Returns
    -------
    labels : ndarray of uint8, shape (H, W)
    probabilities : ndarray, shape (C, H, W), only with ``return_probabilities``
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2D grey image, got shape {image.shape}")
    data = image.astype(np.float32)[None, None]  # (channel, slice, rows, columns), as NaturalImage2DIO reads
    lock = getattr(predictor, "lock", contextlib.nullcontext())
    with lock:
        result = predictor.predict_single_npy_array(data, {"spacing": list(NATURAL_IMAGE_SPACING)}, None, None,
                                                    return_probabilities)
    if return_probabilities:
        labels, probabilities = result
        return labels[0].astype(np.uint8), probabilities[:, 0]
    return result[0].astype(np.uint8)
