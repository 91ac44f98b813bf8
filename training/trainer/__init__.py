"""One training run, from a config file to a calibrated bundle the dashboard loads.

schema, config, guide_config   the run's typed config; the project's YAML or the guide's
datasets, data, image_cache    labelled photos from each distributor's layout, cached once
splits                         patient-disjoint train / validation / calibration / test splits
tiers, loop, distill, logs     the model a tier builds, the epoch loop, teacher distillation
distributed                    torchrun (DDP) plumbing
head_probe, calibration        linear-probe head start; temperature scaling
finalize                       best epoch -> calibrated operating rule, metrics, card, bundle
run                            the command behind `python -m training.train_<tier>`
utils                          the model-architecture guide's utility names over the above
"""
