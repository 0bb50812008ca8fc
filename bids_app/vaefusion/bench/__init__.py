"""What only the benchmarks use (``benchmarks/*.py``): the streamed data path
(:mod:`~vaefusion.bench.stream`), the simulator's calibration figures
(:mod:`~vaefusion.bench.calibration`) and the split of one BIDS dataset into federated sites
(:mod:`~vaefusion.bench.split`). The product never imports this package
(``tests/test_architecture.py`` checks it): it sits above every floor."""
