"""Experiments: reproducible studies that train and compare models end to end (`vlmkit experiment`).

    objectives   contrastive-only vs captioning-only vs CoCa (`vlmkit.experiments.objectives`:
                 `run_objectives`, and `add_experiment_arguments` / `run_experiment_args` for the CLI)
    curation     SigLIP on a corrupted set, raw vs curated with `vlmkit data curate`
                 (`vlmkit.experiments.curation`: `run_curation`)

Nothing is imported here, so that `python -m vlmkit.experiments.objectives` runs cleanly.
"""
