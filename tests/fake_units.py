"""A run_unit for launcher tests: writes what the real runner writes, without training."""

import json
import pathlib

import ml_collections


def write_summary(config, seeds, workdirs):
  for seed, workdir in zip(seeds, workdirs):
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed = int(seed)
    pathlib.Path(workdir, "config.json").write_text(c.to_json_best_effort())
    pathlib.Path(workdir, "summary.json").write_text(json.dumps({"seed": int(seed)}))
