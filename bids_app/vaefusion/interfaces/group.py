"""Thin nipype interfaces for the group level: one fold of a per-fold method (the VAE), one
repeat of a baseline (vaefusion.evaluation.methods), a gatherer.

Results cross node boundaries as JSON lists of :meth:`FoldResult.to_dict`; they are typed
again on the way out (:func:`read_results`).
"""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from vaefusion.disk import naming
from vaefusion.disk.io import atomic_write_text
from vaefusion.disk.progress import write_unit_progress
from vaefusion.evaluation.results import FoldResult


def write_results(path: Path, results: list[FoldResult]) -> str:
    """A unit's results as a JSON list (the node's output file), atomically; returns the
    path."""
    atomic_write_text(path, json.dumps([r.to_dict() for r in results]))
    return str(path)


def read_results(path: str | Path) -> list[FoldResult]:
    """The typed results of a node's output file."""
    return [FoldResult.from_dict(d) for d in json.loads(Path(path).read_text())]


class _UnitInputSpec(BaseInterfaceInputSpec):
    manifest = File(exists=True, mandatory=True, desc="the group manifest (JSON)")
    method_json = traits.Str(mandatory=True, desc="the settings that change results (hashed)")
    runtime_json = traits.Str(mandatory=True, nohash=True,
                              desc="device, threads and memory budget (not hashed: changing "
                                   "them reuses finished units)")
    latent_dim = traits.Int(mandatory=True)
    seed = traits.Int(mandatory=True, desc="initialisation and sampling seed (--seed)")
    repeat = traits.Int(mandatory=True, desc="K-fold repeat (partition seed: cv_seed + repeat)")


class _FoldInputSpec(_UnitInputSpec):
    method = traits.Str(mandatory=True, desc="a per-fold method's registered name")
    fold = traits.Int(mandatory=True)
    train_root = traits.Str(mandatory=True, desc="folder for resumable training checkpoints")


class _ResultOutputSpec(TraitedSpec):
    result = File(exists=True, desc="JSON list of per-fold results (FoldResult.to_dict)")


def _settings(inputs):
    """The unit's method settings and runtime, rebuilt from the node's two JSON inputs."""
    from vaefusion.config import Config, Runtime

    return Config.from_dict(json.loads(inputs.method_json)), Runtime.from_json(inputs.runtime_json)


class FoldUnit(SimpleInterface):
    """Fit (train), embed and classify one (method, latent dim, seed, repeat, fold)."""

    input_spec = _FoldInputSpec
    output_spec = _ResultOutputSpec

    def _run_interface(self, runtime):
        from vaefusion.evaluation.manifest import Manifest
        from vaefusion.evaluation.methods import METHODS
        from vaefusion.interfaces.errors import reported_errors
        from vaefusion.training.gpus import placed

        out = Path(runtime.cwd)
        cfg, run = _settings(self.inputs)
        method = METHODS.get(self.inputs.method)
        unit = naming.unit_name(method.name, self.inputs.latent_dim, self.inputs.seed,
                                self.inputs.repeat, self.inputs.fold)
        progress = Path(self.inputs.train_root) / unit / naming.UNIT_PROGRESS
        progress.unlink(missing_ok=True)  # an earlier run's epochs
        with reported_errors(out):
            # one GPU per concurrent unit, round robin (a no-op on CPU)
            leases = Path(self.inputs.train_root).parent / naming.GPU_LEASES
            with placed(run, leases, unit) as run:
                write_unit_progress(progress, 0, cfg.epochs, gpu=run.gpu)

                def report(stats) -> None:  # the epoch, for OUTPUT_DIR/logs/status.json
                    write_unit_progress(progress, stats.epoch, cfg.epochs, gpu=run.gpu)

                result = method.run_fold(cfg, run, Manifest.read(self.inputs.manifest),
                                         self.inputs.latent_dim, self.inputs.seed,
                                         self.inputs.repeat, self.inputs.fold,
                                         Path(self.inputs.train_root), out,
                                         on_epoch_end=report)
            self._results["result"] = write_results(out / naming.UNIT_RESULT, [result])
        return runtime


class _RepeatInputSpec(_UnitInputSpec):
    method = traits.Str(mandatory=True, desc="a baseline's registered name")
    cache_dir = traits.Str(mandatory=True, desc="folder for the shared Gram matrices")


class RepeatUnit(SimpleInterface):
    """One baseline at one latent dim, seed and repeat, over all folds."""

    input_spec = _RepeatInputSpec
    output_spec = _ResultOutputSpec

    def _run_interface(self, runtime):
        from vaefusion.evaluation.manifest import Manifest
        from vaefusion.evaluation.methods import METHODS
        from vaefusion.interfaces.errors import reported_errors

        with reported_errors(runtime.cwd):
            rows = METHODS.get(self.inputs.method).run_repeat(
                *_settings(self.inputs), Manifest.read(self.inputs.manifest),
                self.inputs.latent_dim, self.inputs.seed, self.inputs.repeat,
                Path(self.inputs.cache_dir))
            self._results["result"] = write_results(Path(runtime.cwd) / naming.UNIT_RESULT,
                                                    rows)
        return runtime


class _GatherInputSpec(BaseInterfaceInputSpec):
    results = InputMultiObject(File(exists=True), mandatory=True)


class GatherResults(SimpleInterface):
    """Join: concatenate the per-unit result lists into one JSON file."""

    input_spec = _GatherInputSpec
    output_spec = _ResultOutputSpec

    def _run_interface(self, runtime):
        rows = [r for path in self.inputs.results for r in read_results(path)]
        self._results["result"] = write_results(Path(runtime.cwd) / naming.GATHERED_RESULTS,
                                                rows)
        return runtime
