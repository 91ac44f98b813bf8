"""The model-architecture guide's Python examples, run as a user types them.

Each snippet below is the guide's text (../shared/MODEL_ARCHITECTURE_GUIDE.md) with only the
import lines mapped (`scripts.model` -> `core.archs.baseline`, ...) plus the edits in `EDITS`:
`pretrained=True` -> `pretrained=False` for resnet50 (there are no offline ImageNet weights for
it; the one place the file is ours, configs/default_config.yaml, uses efficientnet_lite0 with
`pretrained: true` and the offline package weights instead), and `pass` in the one loop whose
body is only a comment (a syntax error as printed). `test_snippets_are_the_guides_text` checks
this against the guide whenever ../shared is beside the checkout.

Snippets run in a temporary folder holding `models/RETFound_cfp_weights.pth`, written in
RETFound's released MAE layout (tests/core/archs/_tiny_ckpt.py) at a tiny width (64-d, 2 blocks,
224 px) so the module stays fast. Names a snippet uses without defining (`torch`, `images`,
`train_loader`, `train`, ...) are given as a user's session would have them. The guide's ViT-L
numbers are checked on a full-size checkpoint in the slow test at the end; the guide prints
793,093 / 303,804,170 there, which match no configuration (see ../shared/RETFOUND.md): the test
asserts the true counts the code prints.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

from core.archs.retfound import read_retfound_checkpoint
from tests.core.archs._tiny_ckpt import EMBED, mae_state_dict, tiny_encoder, write_mae_checkpoint

GUIDE = Path(__file__).resolve().parents[4] / "shared" / "MODEL_ARCHITECTURE_GUIDE.md"
CKPT = "models/RETFound_cfp_weights.pth"
IMPORTS = {  # the guide's module paths -> this project's
    "scripts.model": "core.archs.baseline",
    "scripts.retfound_model": "core.archs.retfound",
    "scripts.retfound_lora": "core.archs.lora",
    "scripts.config": "training.trainer.config",
    "scripts.utils": "training.trainer.utils",
}
NO_RESNET_WEIGHTS = ("pretrained=True", "pretrained=False")  # resnet50: no offline weights
# The guide's baseline YAML; `name` is efficientnet_lite0 so `pretrained: true` works offline.
DEFAULT_CONFIG = """\
model:
  name: efficientnet_lite0  # timm model name
  num_classes: 5            # DR severity levels
  pretrained: true          # Use ImageNet weights
  dropout: 0.3              # Regularization
  freeze_backbone: false    # Whether to freeze backbone
"""

# ----------------------------------------------------------------------------- the snippets
BASIC_CREATION = """\
from core.archs.baseline import DRClassifier

# Create ResNet50 model
model = DRClassifier(
    model_name='resnet50',
    num_classes=5,
    pretrained=False,  # Load ImageNet weights
    dropout_rate=0.3   # Regularization
)

# Forward pass
images = torch.randn(4, 3, 224, 224)
outputs = model(images)  # Shape: (4, 5)
"""

USING_CONFIG_SYSTEM = """\
from training.trainer.config import Config
from core.archs.baseline import DRClassifier

# Load from YAML config
config = Config.from_yaml('configs/default_config.yaml')
model = DRClassifier.from_config(config.model)
"""

TRANSFER_LEARNING_WORKFLOW = """\
# Stage 1: Train only classification head
model = DRClassifier('resnet50', pretrained=False)
model.freeze_backbone()  # Freeze all backbone parameters

optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
# Train for 5-10 epochs...

# Stage 2: Fine-tune entire model
model.unfreeze_backbone()  # Unfreeze all parameters
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # Lower LR
# Train for another 10-20 epochs...
"""

MODEL_INSPECTION = """\
# Count parameters
total_params, trainable_params = model.get_num_params()
print(f"Total: {total_params:,}, Trainable: {trainable_params:,}")

# Get model summary
model.summary()
# Output:
# ✓ Created DRClassifier with backbone: resnet50
#   - Feature dimension: 2048
#   - Output classes: 5
#   - Dropout rate: 0.3
#   - Pretrained: True
"""

LOADING_RETFOUND = """\
from core.archs.retfound import load_retfound_model

# Load pretrained RETFound
model = load_retfound_model(
    checkpoint_path='models/RETFound_cfp_weights.pth',
    num_classes=5,
    global_pool=False  # Use CLS token (recommended)
)

# Use for inference
model.eval()
with torch.no_grad():
    outputs = model(images)
    predictions = torch.argmax(outputs, dim=1)
"""

FULL_FINE_TUNING = """\
# Load model
model = load_retfound_model(
    checkpoint_path='models/RETFound_cfp_weights.pth',
    num_classes=5
)

# All parameters trainable by default
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

# Train on your dataset
for epoch in range(num_epochs):
    # Training loop...
    pass
"""

FEATURE_EXTRACTION = """\
# Load without classification head
model = load_retfound_model(
    checkpoint_path='models/RETFound_cfp_weights.pth',
    num_classes=0  # No classifier
)

# Extract features
features = model(images)  # Shape: (batch, 1024)

# Use features for other tasks (clustering, retrieval, etc.)
"""

CREATING_LORA_MODEL = """\
from core.archs.lora import RETFoundLoRA

# Create model with LoRA adapters
model = RETFoundLoRA(
    checkpoint_path='models/RETFound_cfp_weights.pth',
    num_classes=5,
    lora_r=8,           # Rank
    lora_alpha=32,      # Scaling
    lora_dropout=0.1,   # LoRA dropout
    head_dropout=0.3    # Classifier dropout
)

# Check trainable parameters
model.print_trainable_parameters()
# Output: "trainable params: 793,093 || all params: 303,804,170 || trainable%: 0.26%"
"""

LORA_TRAINING = """\
# Only LoRA parameters and classifier head are trainable
optimizer = torch.optim.AdamW(
    model.parameters(),
    lr=5e-4,  # Higher LR than full fine-tuning
    weight_decay=0.01
)

# Training loop
for epoch in range(num_epochs):
    model.train()
    for images, labels in train_loader:
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
"""

SAVING_LOADING = """\
# Save LoRA adapters only (small file!)
model.save_lora_adapters('adapters_aptos.pth')  # ~3 MB

# Save full model
torch.save(model.state_dict(), 'full_model.pth')  # ~1.2 GB

# Load LoRA model
model = RETFoundLoRA(
    checkpoint_path='models/RETFound_cfp_weights.pth',
    num_classes=5
)
model.load_lora_adapters('adapters_aptos.pth')
"""

MULTIPLE_DATASET_ADAPTERS = """\
# Train adapters for different datasets
model = RETFoundLoRA('models/RETFound_cfp_weights.pth', num_classes=5)

# Train on APTOS
# ... training ...
model.save_lora_adapters('adapters_aptos.pth')

# Switch to Messidor dataset (same base model!)
model.load_lora_adapters('adapters_messidor.pth')
# ... inference on Messidor ...
"""

EXAMPLE_1 = """\
from core.archs.baseline import DRClassifier
from training.trainer.config import Config
from training.trainer.utils import set_seed, create_data_loaders

# Set seed for reproducibility
set_seed(42)

# Load config
config = Config.from_yaml('configs/default_config.yaml')

# Create ResNet50 model
model = DRClassifier(
    model_name='resnet50',
    num_classes=5,
    pretrained=False,
    dropout_rate=0.3
)

# Setup training
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
criterion = nn.CrossEntropyLoss()

# Train...
"""

EXAMPLE_2 = """\
from core.archs.lora import RETFoundLoRA
from training.trainer.config import Config

# Create LoRA model
model = RETFoundLoRA(
    checkpoint_path='models/RETFound_cfp_weights.pth',
    num_classes=5,
    lora_r=8,
    lora_alpha=32
)

# Check trainable parameters
model.print_trainable_parameters()
# trainable params: 793,093 || all params: 303,804,170 || trainable%: 0.26%

# Use higher learning rate for LoRA
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)

# Train...
"""

EXAMPLE_3 = """\
# Stage 1: Feature extraction (frozen backbone)
model = DRClassifier('resnet50', pretrained=False)
model.freeze_backbone()

# Low LR for new classifier head
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

# Train 5 epochs...

# Stage 2: Full fine-tuning
model.unfreeze_backbone()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

# Train 20 more epochs...
"""

EXAMPLE_4 = """\
from core.archs.lora import RETFoundLoRA

# Base model
model = RETFoundLoRA(
    checkpoint_path='models/RETFound_cfp_weights.pth',
    num_classes=5,
    lora_r=8,
    lora_alpha=32
)

# Train on APTOS
train(model, aptos_loader)
model.save_lora_adapters('adapters/aptos_r8.pth')

# Train on Messidor (reuse base model!)
model.load_lora_adapters('adapters/aptos_r8.pth')  # Start from APTOS
train(model, messidor_loader)
model.save_lora_adapters('adapters/messidor_r8.pth')

# Inference: Switch between datasets
model.load_lora_adapters('adapters/aptos_r8.pth')
aptos_predictions = evaluate(model, aptos_test_loader)

model.load_lora_adapters('adapters/messidor_r8.pth')
messidor_predictions = evaluate(model, messidor_test_loader)
"""

IMPORT_CHEAT_SHEET = """\
# Baseline models
from core.archs.baseline import DRClassifier

# RETFound
from core.archs.retfound import load_retfound_model, VisionTransformer

# RETFound + LoRA
from core.archs.lora import RETFoundLoRA

# Config system
from training.trainer.config import Config

# Utilities
from training.trainer.utils import (
    set_seed, count_parameters, save_checkpoint,
    load_checkpoint, calculate_metrics, plot_confusion_matrix
)
"""

# (guide heading, snippet, edits beyond the import lines)
SNIPPETS = [
    ("#### Basic Creation", BASIC_CREATION, [NO_RESNET_WEIGHTS]),
    ("#### Using Config System", USING_CONFIG_SYSTEM, []),
    ("#### Transfer Learning Workflow", TRANSFER_LEARNING_WORKFLOW, [NO_RESNET_WEIGHTS]),
    ("#### Model Inspection", MODEL_INSPECTION, []),
    ("#### Loading RETFound", LOADING_RETFOUND, []),
    ("#### Full Fine-Tuning", FULL_FINE_TUNING,
     [("    # Training loop...\n", "    # Training loop...\n    pass\n")]),
    ("#### Feature Extraction Only", FEATURE_EXTRACTION, []),
    ("#### Creating LoRA Model", CREATING_LORA_MODEL, []),
    ("#### Training", LORA_TRAINING, []),
    ("#### Saving/Loading", SAVING_LOADING, []),
    ("#### Multiple Dataset Adapters", MULTIPLE_DATASET_ADAPTERS, []),
    ("### Example 1: Quick Baseline Experiment", EXAMPLE_1, [NO_RESNET_WEIGHTS]),
    ("### Example 2: RETFound + LoRA Training", EXAMPLE_2, []),
    ("### Example 3: Transfer Learning Pipeline", EXAMPLE_3, [NO_RESNET_WEIGHTS]),
    ("### Example 4: Multi-Dataset LoRA Adapters", EXAMPLE_4, []),
    ("### Import Cheat Sheet", IMPORT_CHEAT_SHEET, []),
]

RESNET50_FEATURES = 2048
RESNET50_HEAD = RESNET50_FEATURES * 5 + 5
LINE = re.compile(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: ([\d.]+)")


def guide_snippet(heading: str) -> str:
    """The first ```python block after `heading` in the guide."""
    lines = GUIDE.read_text(encoding="utf-8").split("\n")
    start = lines.index(heading)
    first = lines.index("```python", start) + 1
    return "\n".join(lines[first:lines.index("```", first)]) + "\n"


def run(snippet: str, **session) -> dict:
    """exec a snippet in a namespace holding what a user's session would already have."""
    namespace = {"torch": torch, "nn": nn, **session}
    exec(compile(snippet, "<guide example>", "exec"), namespace)
    return namespace


def printed(snippet: str, namespace: dict) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "<guide example>", "exec"), namespace)
    return out.getvalue()


def lora_counts(depth: int, width: int, r: int = 8) -> tuple[int, int]:
    """(trainable, added) for LoRA on qkv + a 5-class head + fc_norm, from the dimensions."""
    lora = depth * r * (width + 3 * width)
    return lora + (width * 5 + 5) + 2 * width, lora + (width * 5 + 5)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """The user's project folder: the RETFound file (MAE layout) and the guide's YAML."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    write_mae_checkpoint(tmp_path / CKPT, mae_state_dict(tiny_encoder(img_size=224)))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default_config.yaml").write_text(DEFAULT_CONFIG, encoding="utf-8")
    return tmp_path


def encoder_tensors(path: str | Path = CKPT) -> dict[str, torch.Tensor]:
    return read_retfound_checkpoint(path)


def images_224() -> torch.Tensor:
    return torch.randn(4, 3, 224, 224)  # what Basic Creation defines as `images`


# ----------------------------------------------------------------------------- the guide's text
@pytest.mark.skipif(not GUIDE.is_file(), reason="../shared/MODEL_ARCHITECTURE_GUIDE.md not beside")
@pytest.mark.parametrize("heading,snippet,edits", SNIPPETS, ids=[s[0].strip("# ") for s in SNIPPETS])
def test_snippets_are_the_guides_text(heading, snippet, edits):
    expected = guide_snippet(heading)
    for guide_path, ours in IMPORTS.items():
        expected = expected.replace(f"from {guide_path} import", f"from {ours} import")
    for old, new in edits:
        assert old in expected
        expected = expected.replace(old, new)
    assert snippet == expected


# ----------------------------------------------------------------------------- baseline
def test_basic_creation(workdir):
    ns = run(BASIC_CREATION)
    assert ns["outputs"].shape == (4, 5)
    assert ns["model"].num_features == RESNET50_FEATURES and ns["model"].dropout.p == 0.3


def test_using_config_system_with_offline_imagenet_weights(workdir):
    from core.archs.imagenet_weights import read_package_state

    ns = run(USING_CONFIG_SYSTEM)
    config, model = ns["config"], ns["model"]
    assert (config.model.name, config.model.num_classes, config.model.dropout) == (
        "efficientnet_lite0", 5, 0.3)
    assert model.model_name == "efficientnet_lite0" and model.classifier.out_features == 5
    assert model.dropout.p == 0.3 and model.pretrained
    assert all(p.requires_grad for p in model.parameters())  # freeze_backbone: false
    stem = read_package_state("efficientnet_lite0")["_conv_stem.weight"]
    assert torch.equal(model.backbone.conv_stem.weight, stem)  # ImageNet weights, not random
    assert "  - Pretrained: True" in model.summary().splitlines()


def test_transfer_learning_workflow_stages(workdir):
    stage1, stage2 = TRANSFER_LEARNING_WORKFLOW.split("# Stage 2")
    ns = run(BASIC_CREATION)
    exec(stage1, ns)
    total, trainable = ns["model"].get_num_params()
    assert trainable == RESNET50_HEAD and total > 23_000_000
    exec("# Stage 2" + stage2, ns)
    assert ns["model"].get_num_params() == (total, total)
    assert ns["optimizer"].param_groups[0]["lr"] == 1e-4


def test_model_inspection_prints_the_guides_lines(workdir):
    ns = run(BASIC_CREATION)
    exec(TRANSFER_LEARNING_WORKFLOW, ns)
    out = printed(MODEL_INSPECTION, ns).splitlines()
    assert out[0] == "Total: 23,518,277, Trainable: 23,518,277"  # the guide's "23.5M"
    assert out[1:6] == [
        "✓ Created DRClassifier with backbone: resnet50",
        "  - Feature dimension: 2048",
        "  - Output classes: 5",
        "  - Dropout rate: 0.3",
        "  - Pretrained: False",  # the guide's True: resnet50 has no offline weights here
    ]
    assert out[6] == "  - Size: 23,518,277 parameters (23,518,277 trainable)"
    assert ns["model"].summary() == "\n".join(out[1:])  # and returns the text


# ----------------------------------------------------------------------------- RETFound
def test_loading_retfound_with_global_pool_false_uses_the_cls_token(workdir):
    ns = run(LOADING_RETFOUND, images=images_224())
    model, state = ns["model"], encoder_tensors()
    assert ns["outputs"].shape == (4, 5) and ns["predictions"].shape == (4,)
    assert model.global_pool == "token" and isinstance(model.fc_norm, nn.Identity)
    assert torch.equal(model.norm.weight, state["norm.weight"])  # pretrained norm kept
    assert torch.equal(model.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    with torch.no_grad():
        tokens = model.forward_features(ns["images"])
        pooled = model.forward_head(tokens, pre_logits=True)
    assert torch.equal(pooled, tokens[:, 0])  # False = the CLS token, as in RETFound


def test_full_fine_tuning_trains_everything_with_average_pooling(workdir):
    from core.archs.retfound import load_retfound_model

    ns = run(FULL_FINE_TUNING, load_retfound_model=load_retfound_model, num_epochs=1)
    model = ns["model"]
    assert all(p.requires_grad for p in model.parameters())
    assert sum(len(g["params"]) for g in ns["optimizer"].param_groups) == len(list(model.parameters()))
    assert model.global_pool == "avg"  # RETFound's default (global_pool=True): patch mean + fc_norm
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(v.numel() for v in encoder_tensors().values()) + EMBED * 5 + 5


def test_feature_extraction_returns_pooled_features(workdir):
    from core.archs.retfound import load_retfound_model

    ns = run(FEATURE_EXTRACTION, load_retfound_model=load_retfound_model, images=images_224())
    assert ns["features"].shape == (4, EMBED)  # (batch, 1024) at ViT-L width: see the slow test
    assert isinstance(ns["model"].head, nn.Identity)


# ----------------------------------------------------------------------------- RETFound + LoRA
def _check_trainable_line(out: str, depth: int, width: int) -> None:
    match = LINE.search(out)
    assert match, out
    trainable, added = lora_counts(depth, width)
    encoder = sum(v.numel() for v in encoder_tensors().values())  # norm <-> fc_norm: same size
    assert int(match[1].replace(",", "")) == trainable
    assert int(match[2].replace(",", "")) == encoder + added
    assert float(match[3]) == pytest.approx(100 * trainable / (encoder + added), abs=1e-4)


def test_creating_lora_model_prints_the_trainable_count(workdir):
    ns = run("")
    out = printed(CREATING_LORA_MODEL, ns)
    _check_trainable_line(out, depth=2, width=EMBED)
    model = ns["model"]
    assert model.config["r"] == 8 and model.config["alpha"] == 32.0
    assert model.vit.head_drop.p == 0.3


def _trained_lora(num_epochs: int = 1) -> dict:
    """Creating LoRA Model, then the guide's LoRA training loop on two tiny batches."""
    ns = run(CREATING_LORA_MODEL)
    batches = [(torch.randn(2, 3, 224, 224), torch.tensor([0, 3])),
               (torch.randn(2, 3, 224, 224), torch.tensor([2, 4]))]
    exec(LORA_TRAINING, ns | {"num_epochs": num_epochs, "train_loader": batches,
                              "criterion": nn.CrossEntropyLoss()})
    return ns


def test_lora_training_changes_only_adapters_head_and_norm(workdir):
    ns = _trained_lora()
    vit, state = ns["model"].vit, encoder_tensors()
    qkv = vit.blocks[0].attn.qkv
    assert torch.equal(qkv.weight, state["blocks.0.attn.qkv.weight"])  # frozen base
    assert qkv.lora_B.abs().sum() > 0  # adapters moved (B starts at zero)


def test_saving_loading_restores_the_trained_adapters(workdir):
    ns = _trained_lora()
    trained = ns["model"]
    exec(SAVING_LOADING, ns)
    reloaded = ns["model"]
    assert reloaded is not trained
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(trained.eval()(x), reloaded.eval()(x), atol=1e-6)
    # the adapters are a folder of peft's file names (the guide's name is kept as the folder)
    adapters = workdir / "adapters_aptos.pth" / "adapter_model.safetensors"
    assert adapters.is_file() and (workdir / "adapters_aptos.pth" / "adapter_config.json").is_file()
    assert adapters.stat().st_size * 10 < (workdir / "full_model.pth").stat().st_size


def test_multiple_dataset_adapters_switch_over_one_base(workdir):
    from core.archs.lora import RETFoundLoRA

    messidor = RETFoundLoRA(CKPT, num_classes=5)  # "adapters trained on Messidor", made here
    with torch.no_grad():
        for tensor in messidor.lora_state_dict().values():
            tensor.normal_(0.0, 0.05)
    messidor.save_lora_adapters("adapters_messidor.pth")
    ns = run(MULTIPLE_DATASET_ADAPTERS, RETFoundLoRA=RETFoundLoRA)
    loaded = ns["model"].lora_state_dict()
    saved = load_file("adapters_messidor.pth/adapter_model.safetensors")
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    aptos = load_file("adapters_aptos.pth/adapter_model.safetensors")
    assert not torch.equal(aptos["blocks.0.attn.qkv.lora_B"], saved["blocks.0.attn.qkv.lora_B"])


# ----------------------------------------------------------------------------- usage examples
def test_example_1_quick_baseline_is_reproducible(workdir):
    first, second = run(EXAMPLE_1), run(EXAMPLE_1)
    assert first["config"].model.name == "efficientnet_lite0"
    assert isinstance(first["criterion"], nn.CrossEntropyLoss)
    a, b = first["model"].state_dict(), second["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # set_seed(42): the same random init
    assert first["model"](images_224()).shape == (4, 5)


def test_example_2_lora_training_setup(workdir):
    ns = run("")
    _check_trainable_line(printed(EXAMPLE_2, ns), depth=2, width=EMBED)
    params = ns["optimizer"].param_groups[0]
    assert params["lr"] == 5e-4


def test_example_3_transfer_learning_pipeline(workdir):
    from core.archs.baseline import DRClassifier

    stage1, stage2 = EXAMPLE_3.split("# Stage 2")
    ns = run(stage1, DRClassifier=DRClassifier)
    total, trainable = ns["model"].get_num_params()
    assert trainable == RESNET50_HEAD
    assert isinstance(ns["optimizer"], torch.optim.Adam)
    exec("# Stage 2" + stage2, ns)
    assert ns["model"].get_num_params() == (total, total)


def test_example_4_multi_dataset_adapters(workdir):
    snapshots: list[dict[str, torch.Tensor]] = []
    test_images = torch.randn(3, 3, 224, 224)

    def train(model, loader):  # the user's training function
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        snapshots.append({k: v.clone() for k, v in model.lora_state_dict().items()})

    def evaluate(model, loader):  # the user's evaluation function: logits
        model.eval()
        with torch.no_grad():
            return torch.cat([model(x) for x, _ in loader])

    def loader(seed: int) -> list:
        gen = torch.Generator().manual_seed(seed)
        return [(torch.randn(2, 3, 224, 224, generator=gen), torch.tensor([seed % 5, 4]))]

    test_loader = [(test_images, torch.zeros(3, dtype=torch.long))]
    ns = run(EXAMPLE_4, train=train, evaluate=evaluate, aptos_loader=loader(1),
             messidor_loader=loader(2), aptos_test_loader=test_loader,
             messidor_test_loader=test_loader)
    aptos = load_file("adapters/aptos_r8.pth/adapter_model.safetensors")
    messidor = load_file("adapters/messidor_r8.pth/adapter_model.safetensors")
    assert all(torch.equal(aptos[k], snapshots[0][k]) for k in aptos)
    assert all(torch.equal(messidor[k], snapshots[1][k]) for k in messidor)
    assert not torch.allclose(ns["aptos_predictions"], ns["messidor_predictions"])
    ns["model"].load_lora_adapters("adapters/aptos_r8.pth")  # switching back gives APTOS again
    assert torch.equal(evaluate(ns["model"], test_loader), ns["aptos_predictions"])


def test_best_practices_model_selection_calls(workdir):
    """The two RETFound calls of "Model Selection" (no num_classes: the 5 grades by default)."""
    from core.archs.lora import RETFoundLoRA
    from core.archs.retfound import load_retfound_model

    model = load_retfound_model('models/RETFound_cfp_weights.pth')  # Full FT
    assert model.num_classes == 5
    model = RETFoundLoRA(
        'models/RETFound_cfp_weights.pth',
        lora_r=8, lora_alpha=32
    )  # Recommended ⭐
    assert model.config["num_classes"] == 5 and model.config["r"] == 8


def test_import_cheat_sheet(workdir):
    ns = run(IMPORT_CHEAT_SHEET)
    assert ns["VisionTransformer"] is timm.models.vision_transformer.VisionTransformer
    assert all(callable(ns[name]) for name in (
        "DRClassifier", "load_retfound_model", "RETFoundLoRA", "set_seed", "count_parameters",
        "save_checkpoint", "load_checkpoint", "calculate_metrics", "plot_confusion_matrix"))
    assert ns["Config"].from_yaml  # the class, with the guide's constructor


# ----------------------------------------------------------------------------- real size
@pytest.mark.slow
def test_vit_large_examples_print_the_real_counts(tmp_path, monkeypatch):
    """Loading RETFound, Feature Extraction and Creating LoRA Model on a full-size ViT-L/16
    checkpoint in RETFound's MAE layout (random weights, written here)."""
    from core.archs.retfound import build_retfound_vit, load_retfound_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with torch.no_grad():
        encoder = build_retfound_vit(num_classes=0, global_pool="token")  # norm, no head
        write_mae_checkpoint(tmp_path / CKPT, mae_state_dict(encoder))
    del encoder
    images = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        ns = run(LOADING_RETFOUND, images=images)
        assert sum(p.numel() for p in ns["model"].parameters()) == 303_306_757
        assert ns["outputs"].shape == (4, 5)
        ns = run(FEATURE_EXTRACTION, load_retfound_model=load_retfound_model, images=images)
        assert ns["features"].shape == (4, 1024)
    del ns
    out = printed(CREATING_LORA_MODEL, run(""))
    assert out.startswith(
        "trainable params: 793,605 || all params: 304,093,189 || trainable%: 0.2610")
