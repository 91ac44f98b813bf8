"""How a bundle or a training recipe is measured, each a command (`python -m training.evaluation.X`).

bootstrap               per-photo outcomes and patient-bootstrap 95% intervals (shared below)
crossval                k-fold patient-disjoint cross-validation of a recipe (trains the folds)
multi_source            the shipped multi-set recipe: held-out table and leave one set out
evaluate_cross_dataset  a bundle graded on another dataset; held_out writes tables onto a bundle
paired_cv               two recipes compared photo for photo on the same photos
learning_curve          cross-validations at growing training fractions
operating_rules         other operating rules fitted where the shipped one was, out of fold
patient_level           what the fellow eye's photo adds
eyeq_agreement          the quality gate against EyeQ's human labels
"""
