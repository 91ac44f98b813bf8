"""What every training job shares: metrics (AUROC, kappa, calibration bins), figures, provenance.

Nothing here imports another part of training/, so any job may import it.
"""
