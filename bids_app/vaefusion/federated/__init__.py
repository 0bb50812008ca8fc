"""Federated vaefusion: FedAvg of the shared VAE and a federated evaluation, engine-free.

Sites keep their subjects. A :class:`~vaefusion.federated.server.Coordinator` (the server) and
one :class:`~vaefusion.federated.site.SiteRunner` per site exchange only the typed messages of
:mod:`vaefusion.federated.messages` (model parameters, counts, aggregate statistics and
metrics), serialized by :mod:`vaefusion.federated.codec`. How the messages travel is a
:class:`~vaefusion.federated.server.Transport`: :mod:`vaefusion.federated.local` calls the sites
in this process (tests, benchmarks), :mod:`vaefusion.flare` carries the same bytes over NVIDIA
FLARE (``vaefusion-federated simulate`` and NeuroFLAME). Nothing in this package imports
NVFlare.

The protocol, in order (task names in :mod:`vaefusion.federated.messages`):

1. **prepare**: each site preprocesses its BIDS dataset with vaefusion's participant level and
   answers with its counts, modality names and grid; the server checks that the sites agree.
2. **train**, ``rounds`` times: each site loads the global weights, trains ``local_epochs``
   epochs on its own subjects (its Adam state stays local) and sends its weights; the server
   averages them weighted by the sites' numbers of volumes (FedAvg, McMahan et al. 2017).
3. **embed**: each site embeds its subjects with the global model and sends, per part of its
   subjects, counts, sums and sums of squares of the features (pooled standardisation).
4. **classify**, until converged: an L2 logistic regression per evaluation fit (leave one
   site out; within-site stratified K-fold) is fitted by L-BFGS on the server from the sites'
   summed loss gradients.
5. **score**: each site scores its held-out subjects and sends the Mann-Whitney count and the
   class counts, from which the server forms per-site and pooled ROC-AUCs.
6. **finish**: the server sends the global model and the summary, which every site writes to
   its own output folder.
"""
