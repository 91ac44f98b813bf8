"""Every shell command in README.md runs, as written, the way a user runs it: a subprocess.

Commands are parsed from README.md (every line of a ```bash block, plus inline `python -m ...`
spans that carry arguments), so a command added later is covered too, and one that no longer
parses, imports or runs fails here. They run in a sandbox that mirrors the checkout (symlinks)
so nothing is written into it; `../shared` is beside the sandbox as it is beside a checkout.

Stand-ins, where a README command names data that cannot exist in CI:
- `RETFound_cfp_weights.pth`: a tiny checkpoint in RETFound's MAE layout (tests/core/archs);
- `data/aptos2019/`: a tiny synthetic APTOS-layout set (core.synthetic);
- `path/messidor_data.csv` + `path/IMAGES`: tiny synthetic photos in the Messidor-2 layout;
- `FOLDER`: a folder of 8 synthetic photos;
- `../shared/realdata/eyepacs`: 8 synthetic photos in the Kaggle EyePACS + EyeQ layout (the
  real folder has hundreds of full-size photos; `../shared` beside the sandbox is this stand-in).
Appended settings, where the exact text would train for minutes to hours:
- training commands get TINY_TRAIN (`--set`, one epoch, small inputs) after their own text;
  `training.tuning.hpo` also `--trials 2`; `training.pretraining.pretrain_mae` gets TINY_MAE and
  8 synthetic photos (a 2-block 64-d encoder), whose checkpoint the README's next commands read;
- `training.evaluation.crossval` (5 folds, about 30 minutes on 2 cores by the README's own
  account) and `training.evaluation.multi_source` (four models on the three real sets) are
  skipped with that reason; tests/training/evaluation/test_crossval.py and test_multi_source.py
  run them on tiny data. So are `training.evaluation.operating_rules`, `.patient_level` and
  `.paired_cv`, which read those folds (tests/training/evaluation/test_operating_rules.py,
  test_patient_level.py, test_paired_cv.py).
Not run: `pip install -r requirements.txt` (.ci/run runs exactly it before this suite; a test
must not reinstall the environment under test; checked below that .ci/run does) and
`python -m pytest` (it is this suite).
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TINY_TRAIN = ("data.num_workers=0", "data.val_fraction=0.25", "optim.epochs=1",
              "optim.batch_size=8", "optim.warmup_epochs=0.5", "optim.patience=50",
              "tensorboard=false")
TINY_MAE = ("model.size=test", "preprocessing.input_size=64", "data.cache_dir=null",
            "data.num_workers=0", "optim.batch_size=4", "optim.epochs=1",
            "optim.warmup_epochs=0.5", "tensorboard=false")
TINY_CNN_INPUT = "preprocessing.input_size=64"  # the ViT tiers keep their size (tiny encoder)
PER_COMMAND_S = 300


def readme_commands(text: str) -> list[str]:
    """Shell commands in README order: ```bash lines (joined on `\\`), then inline spans."""
    commands: list[str] = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [ln.strip() for ln in joined.splitlines()
                     if ln.strip() and not ln.strip().startswith("#")]
    for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(span.split())  # a span may wrap onto the next line of prose
        if re.match(r"(python -m|streamlit run|torchrun) \S+ \S", span) and "<" not in span:
            commands.append(span)
    return list(dict.fromkeys(commands))


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_readme_has_the_commands_the_issue_names():
    joined = "\n".join(COMMANDS)
    for needle in ("streamlit run dashboard/app.py", "python -m core.screening FOLDER",
                   "python -m training.train_", "python -m training.interchange.export",
                   "python -m training.evaluation.evaluate_cross_dataset", "python -m pytest"):
        assert needle in joined, f"README no longer has a command with {needle!r}"


def test_ci_runs_the_readme_install_and_test_commands():
    """The two commands this module does not run itself are exactly what .ci/run runs."""
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    tests = [c for c in COMMANDS if c.startswith("pip install") and "pytest" in c]
    assert tests, "README has no install-and-test command"
    for cmd in tests:
        assert cmd in ci or cmd.replace("pip install ", "pip install -q ") in ci, cmd


# ---------------------------------------------------------------- the sandbox


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A checkout-shaped folder: code and configs linked, models/ and data/ its own."""
    top = tmp_path_factory.mktemp("readme")
    box = top / "repo"
    box.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {"models", "data", "runs", ".git"} and not entry.name.endswith(
                ".onnx"):
            (box / entry.name).symlink_to(entry)
    (box / "models").mkdir()
    for bundle in (REPO / "models").iterdir():
        (box / "models" / bundle.name).symlink_to(bundle)
    _stand_ins(box)
    return box


def _stand_ins(box: Path) -> None:
    from core.synthetic import write_aptos_dataset
    from tests.core.archs._tiny_ckpt import mae_state_dict, tiny_encoder, write_mae_checkpoint

    write_mae_checkpoint(box / "RETFound_cfp_weights.pth", mae_state_dict(tiny_encoder()))
    aptos = write_aptos_dataset(box / "data" / "aptos2019", 32, seed=3, size=160)
    rows = list(csv.DictReader((aptos / "train.csv").open()))
    images = box / "path" / "IMAGES"
    images.mkdir(parents=True)
    with (box / "path" / "messidor_data.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["image_id", "adjudicated_dr_grade"])
        for row in rows[:10]:
            name = f"{row['id_code']}.png"
            shutil.copy(aptos / "train_images" / name, images / name)
            out.writerow([name, row["diagnosis"]])
    folder = box / "FOLDER"
    folder.mkdir()
    for row in rows[:8]:
        shutil.copy(aptos / "train_images" / f"{row['id_code']}.png", folder)
    _eyepacs_stand_in(box.parent / "shared" / "realdata" / "eyepacs")


def _eyepacs_stand_in(root: Path) -> None:
    """Kaggle EyePACS names (`<id>_<eye>.jpeg` in train/) with EyeQ's quality labels."""
    from PIL import Image

    from core.synthetic import generate_fundus

    (root / "train").mkdir(parents=True)
    with (root / "eyeq_quality.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["image", "quality"])
        for i in range(8):
            name = f"{10 + i // 2}_{'left' if i % 2 else 'right'}"
            Image.fromarray(generate_fundus(i % 5, i, size=256).image).save(
                root / "train" / f"{name}.jpeg", quality=90)
            out.writerow([name, ("good", "usable", "reject")[i % 3]])
    out_csv = root / "trainLabels.csv"
    out_csv.write_text("image,level\n" + "".join(f"{10 + i // 2}_{'left' if i % 2 else 'right'},"
                                                  f"{i % 5}\n" for i in range(8)))


def _env(box: Path) -> dict[str, str]:
    env = dict(os.environ, DR_DB_PATH=str(box / "data" / "screening.db"), HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env.pop("DR_MODELS_DIR", None)
    return env


# ---------------------------------------------------------------- how each command runs


def _module(cmd: str) -> str:
    match = re.search(r"-m\s+(\S+)", cmd)
    return match.group(1) if match else ""


def _plan(cmd: str) -> tuple[str, str]:
    """(shell text to run, reason to skip or ''), from the README text."""
    parts = [p.strip() for p in cmd.split("&&")]
    parts = [p for p in parts if not p.startswith("pip install")]  # .ci/run runs it
    text = " && ".join(parts)
    module = _module(text)
    if module == "pytest":
        return text, "the test suite itself: .ci/run runs exactly this command"
    if module == "training.evaluation.crossval":
        return text, "5-fold cross-validation: about 30 minutes on 2 cores (README)"
    if module == "training.evaluation.multi_source":
        return text, ("trains four models on the 2,476 real photos (about 70 minutes on 2 cores, "
                      "models/README.md); tests/training/evaluation/test_multi_source.py runs it on "
                      "stand-in folders in the three layouts")
    if module in ("training.evaluation.operating_rules", "training.evaluation.patient_level",
                  "training.evaluation.paired_cv"):
        package, name = module.rsplit(".", 1)
        return text, ("reads the folds of the cross-validation above (skipped here); "
                      f"tests/{package.replace('.', '/')}/test_{name}.py runs this command on "
                      "tiny folds")
    if module == "training.pretraining.pretrain_mae":  # the tiny encoder, one epoch on 8 synthetic photos
        flags = " ".join(f"--set {shlex.quote(s)}" for s in TINY_MAE)
        return f"{text} --source synthetic:8 {flags}", ""
    if module.startswith("training.") and "--config" in text:
        extra = list(TINY_TRAIN)
        if "baseline" in text:
            extra.append(TINY_CNN_INPUT)
        flags = " ".join(f"--set {shlex.quote(s)}" for s in extra)
        if module == "training.tuning.hpo":
            flags = "--trials 2 " + flags
        return f"{text} {flags}", ""
    return text, ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_server(text: str, box: Path) -> None:
    """Start the dashboard, wait until it answers, keep it up a few seconds, kill it by PID."""
    port = _free_port()
    env = dict(_env(box), STREAMLIT_SERVER_PORT=str(port), STREAMLIT_SERVER_HEADLESS="true")
    proc = subprocess.Popen(text, shell=True, cwd=box, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, body = time.monotonic() + 120, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=5) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert body == "ok", f"the dashboard did not answer on port {port}"
        time.sleep(3)
        assert proc.poll() is None, "the dashboard exited by itself"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the shell and streamlit: this group only
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert "Traceback" not in out, out[-3000:]


@pytest.mark.timeout(PER_COMMAND_S + 60)
@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command_runs(cmd, sandbox):
    text, skip = _plan(cmd)
    if skip:
        pytest.skip(skip)
    if "streamlit run" in text:
        _run_server(text, sandbox)
        return
    proc = subprocess.run(text, shell=True, cwd=sandbox, env=_env(sandbox), text=True,
                          capture_output=True, timeout=PER_COMMAND_S)
    assert proc.returncode == 0, f"{text}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    _check_output(text, sandbox, proc.stdout)


def _check_output(text: str, box: Path, stdout: str) -> None:
    """What the command promises, where it is cheap to see."""
    module = _module(text)
    if module == "core.screening":
        assert "8 files, 8 results" in stdout, stdout
    elif module == "training.interchange.export":
        out = re.search(r"--out\s+(\S+)", text).group(1)
        assert (box / out).is_file()
    elif module == "training.interchange.import_retfound":
        out = re.search(r"--out\s+(\S+)", text).group(1)
        assert (box / out / "manifest.json").is_file()
    elif module.startswith("training.train_"):
        assert "bundle written to" in stdout, stdout[-2000:]
