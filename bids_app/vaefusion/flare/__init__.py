"""NVIDIA FLARE glue: the federated protocol of :mod:`vaefusion.federated` as NVFlare components.

:class:`~vaefusion.flare.controller.VaefusionController` (server workflow) runs the
:class:`~vaefusion.federated.server.Coordinator` with NVFlare tasks as its transport;
:class:`~vaefusion.flare.executor.VaefusionExecutor` (client) answers them with a
:class:`~vaefusion.federated.site.SiteRunner`. Messages travel as the codec's bytes in chunks of
at most 8 MiB (NeuroFLAME's inline limit) with a SHA-256 digest (:mod:`vaefusion.flare.wire`).
:mod:`vaefusion.flare.job` writes NVFlare job folders (simulation and NeuroFLAME) and
:mod:`vaefusion.flare.simulate` runs NVFlare's simulator. This is the only subpackage that
imports NVFlare (the optional ``federated`` extra).
"""
