#!/usr/bin/env bash
# Make NeuroFLAME's test data: three small simulated sites (BIDS datasets with NeuroMark ICN
# maps and GMV) and a server/parameters.json sized for a CPU. Nothing here is committed: run
# this script (it needs vaefusion installed) and then, for a local check,
#   vaefusion-federated simulate test_data/site1 test_data/site2 test_data/site3 \
#     --out test_output --parameters test_data/server/parameters.json
set -euo pipefail
cd "$(dirname "$0")"
for i in 1 2 3; do
  rm -rf "site$i"
  # each site its own seed (its own subjects and site effect), 12 subjects (6 SZ, 6 HC)
  vaefusion-simulate "site$i" --n-subjects 12 --seed "$i" --n-sites 1 \
    --icn-res 9 --gm-res 4.5 --n-components 8 -q
done
mkdir -p server
cat > server/parameters.json <<'JSON'
{
  "rounds": 3,
  "local_epochs": 1,
  "latent_dim": 4,
  "width": 0.125,
  "downsample": 2,
  "lr": 0.001,
  "likelihood": "sigma",
  "n_components": 8,
  "folds": 2,
  "skip_bids_validation": true
}
JSON
echo "test data: $(pwd)/site1 site2 site3 and server/parameters.json"
