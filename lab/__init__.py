"""The research wing: experiments, benchmarks and the direction probe, with their reports and figures.
It imports the product (models, datasets, losses, utils, the scripts); nothing in the product imports it.
Run its scripts from the repository root as modules, e.g. `python -m lab.probe_order --help`."""
