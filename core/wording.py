"""Wording that CLINICAL.md requires on every page and every export, kept in one place."""

RESEARCH_USE_NOTICE = (
    "Research use only. Not a medical device; not for diagnosis or referral decisions without "
    "review by a qualified eye-care professional. Not validated on your camera or population. "
    "Does not detect other eye disease (glaucoma, AMD, vein occlusion, tumours). "
    "Ungradable means refer."
)

DEMO_NOTICE = (
    "Demo model: trained on synthetic images, for trying the software only. "
    "Its outputs say nothing about real patients."
)

RETFOUND_LICENSE_NOTICE = (
    "RETFound weights are licensed for non-commercial use (CC BY-NC 4.0)."
)

HEATMAP_CAPTION = (
    "Highlighted: regions that most influenced the model. These are not lesion detections; "
    "compare with the un-annotated photo."
)

def heatmap_off_field(share: float) -> str:
    """Said under a heatmap whose weight sits mostly off the retina (core.overlay)."""
    return (f"{share:.0%} of this map is on the black border or the field's edge, not the "
            "retina: it does not show where lesions are.")


RESULT_RECORD_NOTICE = (
    "Each result records the model name, version, preprocessing and thresholds used."
)


def real_data_notice(training_data: str) -> str:
    """What a card and every page say of a bundle trained on real photos (not a demo)."""
    return (f"Trained on {training_data.split(':')[0]}. Research use only; not validated on "
            "your camera or population.")


def encoder_notice(training_data: str) -> str:
    """What the pages say of an encoder bundle, which grades nothing: the generic "Trained on
    ..." line read as if it were a grader."""
    made = training_data.split(" (")[0].split(":")[0].strip() or "pretraining"
    return (f"Encoder only, not a grader: the ViT tiers start from it ({made}; its model card "
            "says how it was made).")
