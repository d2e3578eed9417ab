"""Training: contrastive losses (`losses`); the trainer, optimiser/schedule and recipes live here."""
