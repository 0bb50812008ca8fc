"""Thin nipype interfaces around discovery, preprocessing and the derivatives sink.

Data errors do not crash a node: they come back as ``error`` so that the run can report every
bad subject at once, with exit code 65 and no traceback.
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    Undefined,
    isdefined,
    traits,
)

from vaefusion.errors import VaefusionError


class _BIDSSourceInputSpec(BaseInterfaceInputSpec):
    subject_json = traits.Str(mandatory=True, desc="a serialized discovery.SubjectInputs")


class _BIDSSourceOutputSpec(TraitedSpec):
    icn = File(exists=True, desc="4D NeuroMark ICN maps")
    gmv = traits.Either(File(exists=True), None, desc="3D gray-matter volume, or None")
    subject = traits.Str()
    session = traits.Either(traits.Str(), None)
    label = traits.Either(traits.Str(), None)


class BIDSSource(SimpleInterface):
    """The input files that discovery selected for one subject (fMRIPrep's bidssrc)."""

    input_spec = _BIDSSourceInputSpec
    output_spec = _BIDSSourceOutputSpec

    def _run_interface(self, runtime):
        from vaefusion.inputs.types import SubjectInputs

        item = SubjectInputs.from_json(self.inputs.subject_json)
        self._results.update(icn=item.icn, gmv=item.gmv, subject=item.subject,
                             session=item.session, label=item.label)
        return runtime


class _PreprocessInputSpec(BaseInterfaceInputSpec):
    icn = File(exists=True, mandatory=True)
    gmv = traits.Either(File(exists=True), None, mandatory=True)
    subject = traits.Str(mandatory=True)
    session = traits.Either(traits.Str(), None, mandatory=True)
    label = traits.Either(traits.Str(), None, mandatory=True)
    cache_dir = traits.Str(mandatory=True, desc="the training cache folder")
    icn_order = traits.List(traits.Int(), value=[], usedefault=True,
                            desc="--icn-order: the template component of each volume")


class _PreprocessOutputSpec(TraitedSpec):
    cache_file = traits.Either(File(exists=True), None)
    error = traits.Str(desc="a one-sentence data error, or ''")


class PreprocessSubject(SimpleInterface):
    """Resample, scale and stack one subject into the training cache."""

    input_spec = _PreprocessInputSpec
    output_spec = _PreprocessOutputSpec

    def _run_interface(self, runtime):
        from vaefusion.inputs.preprocess import preprocess_subject
        from vaefusion.interfaces.errors import reported_errors

        # a full disk fails the node (so a rerun retries it) with a record of exit 73
        with reported_errors(runtime.cwd):
            try:
                npy, _ = preprocess_subject(
                    self.inputs.icn, self.inputs.gmv, self.inputs.subject, self.inputs.session,
                    self.inputs.label, Path(self.inputs.cache_dir),
                    icn_order=list(self.inputs.icn_order),
                )
                self._results.update(cache_file=str(npy), error="")
            except VaefusionError as exc:
                self._results.update(cache_file=None, error=exc.message)
        return runtime


class _SinkInputSpec(BaseInterfaceInputSpec):
    cache_file = traits.Either(File(exists=True), None, mandatory=True)
    error = traits.Str(mandatory=True)
    output_dir = traits.Str(mandatory=True)
    dataset_links = traits.Dict(traits.Str, traits.Str, value={}, usedefault=True,
                                desc="the output's DatasetLinks (name -> folder) for Sources")


class _SinkOutputSpec(TraitedSpec):
    out_file = traits.Either(File(exists=True), None)
    error = traits.Str()


class DerivativesSink(SimpleInterface):
    """Write a subject's preprocessed stack, and its GMV as a BIDS probseg, into the
    BIDS-Derivatives output, atomically.

    The node always runs (so deleted outputs come back) but skips a subject whose outputs and
    sidecars are all newer than its cache entry.
    """

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        from vaefusion.interfaces.errors import reported_errors

        with reported_errors(runtime.cwd):
            return self._sink(runtime)

    def _sink(self, runtime):
        import numpy as np

        from vaefusion.derivatives.subject import write_preproc_gm, write_subject_stack
        from vaefusion.disk.naming import preproc_gm, preproc_stack, sidecar
        from vaefusion.inputs.cache import load_stack, read_meta
        from vaefusion.inputs.reference import GMV_MODALITY

        self._results["error"] = self.inputs.error
        cache = self.inputs.cache_file
        if self.inputs.error or not isdefined(cache) or cache in (None, Undefined):
            self._results["out_file"] = None
            return runtime
        meta = read_meta(Path(cache))
        out = Path(self.inputs.output_dir)
        links = dict(self.inputs.dataset_links)
        target = preproc_stack(out, meta.subject, meta.session)
        # the GM probseg exists only with a GMV (--missing-modality keep may drop it)
        gm = GMV_MODALITY in meta.modalities and len(meta.sources) > 1
        outputs = [target]
        if gm:
            outputs.append(preproc_gm(out, meta.subject, meta.session, meta.sources[0]))
        # every file and its sidecar, each newer than the cache entry: a run killed between
        # two writes must not leave a data file without its sidecar for good
        newer = all(p.exists() and p.stat().st_mtime >= Path(cache).stat().st_mtime
                    for f in outputs for p in (f, sidecar(f)))
        if not newer:
            stack = np.asarray(load_stack(Path(cache)))
            affine = np.asarray(meta.affine)
            target = write_subject_stack(out, meta.subject, meta.session, stack, affine,
                                         meta.modalities, meta.sources, links)
            if gm:
                write_preproc_gm(out, meta.subject, meta.session,
                                 stack[meta.modalities.index(GMV_MODALITY)], affine,
                                 icn_source=meta.sources[0], gmv_source=meta.sources[1],
                                 links=links)
        self._results["out_file"] = str(target)
        return runtime
