"""train_hypercut.py, test_hypercut.py and generate_order.py on a tiny dataset, in-process (plus one
command-line call): run outputs, exact resume, figures against an independent computation, order files."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import one_line_error
from _tiny import written_dataset
import torch
import torch.nn.functional as F

import generate_order
import test_hypercut
import train_hypercut
from datasets.blur2vid import Blur2VidDataset
from datasets.metadata import frame_key
from datasets.transforms import read_image
from torchvision.io import write_png
from models.convention import REFERENCE_BGR_IMAGENET
from models.hypercut import HyperCUT, hit_con, load_hypercut, order_decisions

REPO = Path(__file__).resolve().parents[1]
SIZE = 40  # f needs at least 33 pixels


def _texture(gen, size):
    """A smooth random colour texture (3, size, size) in [0, 1], brighter to the right: a window moving
    sideways over it changes its mean brightness monotonically."""
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=gen)
    fine = torch.rand(1, 3, size // 2, size // 2, generator=gen)
    img = 0.3 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) \
        + 0.1 * F.interpolate(fine, size=(size, size), mode="bilinear", align_corners=False)
    return (img[0] + torch.linspace(0.0, 0.6, size)).clamp(0, 1)


def _sequence(gen, reverse=False):
    """7 frames of a window moving in a straight line over a texture; blur = their mean."""
    tex = _texture(gen, 2 * SIZE)
    steps = torch.tensor([-3, -2, 2, 3])
    dx, dy = int(steps[torch.randint(0, 4, (), generator=gen)]), int(torch.randint(-3, 4, (), generator=gen))
    x0, y0 = SIZE // 2 - 3 * dx, SIZE // 2 - 3 * dy
    frames = [tex[:, y0 + k * dy:y0 + k * dy + SIZE, x0 + k * dx:x0 + k * dx + SIZE] for k in range(7)]
    frames = frames[::-1] if reverse else frames
    return torch.stack(frames).mean(0), frames


def make_dataset(root: Path, counts=None, orders=("ignore",), seed=0) -> Path:
    """A tiny dataset with unknown fields per entry and at top level; entries cycle through `orders`;
    every second test/val sequence is the reverse of the one before it."""
    counts = counts or {"train": 4, "val": 2, "test": 4}
    gen = torch.Generator().manual_seed(seed)
    sequences = []
    for split, n in counts.items():
        for j in range(n):
            state = gen.get_state()
            if j % 2 == 1 and split != "train":
                gen.set_state(prev)  # the same content as the previous sequence, stored reversed
            blur, frames = _sequence(gen, reverse=j % 2 == 1 and split != "train")
            prev = state
            i = len(sequences)
            sequences.append({"partition": split, "blur": blur, "frames": frames, "order": orders[i % len(orders)],
                              "extra": {"note": f"seq {i}", "nested": {"k": [i, "x"]}}})
    return written_dataset(root, sequences, name="Tiny", frame_per_seq=7, license="test data", extra_top={"a": 1})


def train_argv(root, ckpt_dir, exp, *extra):
    return ["--metadata_root", str(root), "--exp_name", exp, "--checkpoints_dir", str(ckpt_dir),
            "--device", "cpu", "--num_workers", "0", "--crop_size", "36", "--batch_size", "2",
            "--out_dim", "32", "--train_step", "1", *extra]  # a narrow f (32 channels throughout) keeps the runs fast


def run_train(argv):
    args = train_hypercut.build_parser().parse_args(argv)
    train_hypercut.check_args(args)
    return train_hypercut.train(args)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """3 epochs on 4 sequences in one batch, full images, no augmentation: every step sees the same
    batch. A small lr: Adamax's first steps move every weight by about lr, which at 5e-4 rescales this
    near-linear network (slope 1.0) by a large factor and makes single steps overshoot."""
    ckpt = tmp_path_factory.mktemp("runs")
    history = run_train(train_argv(data, ckpt, "fit", "--epochs", "3", "--val_epoch", "1", "--no_augment",
                                   "--crop_size", str(SIZE), "--batch_size", "4", "--lr", "1e-5"))
    return ckpt / "fit", history


@pytest.fixture(scope="module")
def reference_ckpt(hypercut_compact, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "hypercut_reference.pth"
    torch.save(hypercut_compact["state_dict"], path)  # a plain state dict, as the authors released it
    return path


# --- training --------------------------------------------------------------------------------------

def test_training_lowers_the_loss(trained):
    _, history = trained
    losses = history["losses"]
    assert len(losses) == 3  # 4 sequences, batch 4: one step per epoch, always the same batch
    assert losses[2] < losses[1] < losses[0]


def test_run_folder(trained):
    run_dir, history = trained
    args = json.loads((run_dir / "args.json").read_text())
    assert args["exp_name"] == "fit" and args["slope"] == 1.0 and args["out_dim"] == 32
    log = (run_dir / "log.txt").read_text()
    assert "epoch 3/3" in log and "val epoch 3" in log and "con@3" in log
    assert sorted(p.name for p in (run_dir / "models").glob("*.pth")) == ["0001.pth", "0002.pth", "0003.pth"]
    assert {"latest.pth", "0003.pth"} <= {p.name for p in (run_dir / "training_states").glob("*.pth")}

    ckpt = torch.load(run_dir / "models" / "0001.pth", weights_only=True)
    assert {"model", "epoch", "step", "args", "hypercut_config", "input_convention"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["step"] == 1
    model = load_hypercut(run_dir / "models" / "0001.pth")
    assert model.input_convention == REFERENCE_BGR_IMAGENET  # the reference's convention, recorded
    assert model.config == {"out_dim": 32, "f_func": "ResnetIm2Vec", "g_func": "Concat", "slope": 1.0}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/total", "train/diff", "train/same", "train/lr", "val/loss", "val/hit", "val/con@2",
            "val/con@3"} <= tags
    logged = [e.value for e in acc.Scalars("train/total")]
    assert logged == pytest.approx(history["losses"], rel=1e-6)  # TensorBoard stores float32
    assert set(history["val"]) == {1, 2, 3}


@pytest.mark.parametrize("workers", ["0", "1"])
def test_resume_continues_exactly(data, tmp_path, workers):
    """2 epochs straight == 1 epoch, then --resume for the second (with augmentation and shuffling)."""
    common = ["--val_epoch", "2", "--num_workers", workers]
    straight = run_train(train_argv(data, tmp_path, "straight", "--epochs", "2", *common))
    first = run_train(train_argv(data, tmp_path, "split", "--epochs", "1", *common))
    second = run_train(train_argv(data, tmp_path, "split", "--epochs", "2", "--resume", *common))
    assert len(straight["losses"]) == 4  # 4 sequences, batch 2
    assert first["losses"] + second["losses"] == straight["losses"]  # bit for bit
    a = torch.load(tmp_path / "straight" / "models" / "0002.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "models" / "0002.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["val"][2] == second["val"][2]


def test_train_refuses_to_overwrite_a_run(data, trained, capsys):
    run_dir, _ = trained
    err = one_line_error(capsys, train_hypercut.main,
                         train_argv(data, run_dir.parent, "fit", "--epochs", "1"))
    assert "--resume" in err


@pytest.mark.parametrize("argv_patch, needle", [
    ({"--metadata_root": "/nonexistent/dataset"}, "metadata file not found"),
    ({"--epochs": "0"}, "--epochs"),
    ({"--epochs": "many"}, "invalid int value"),  # argparse's own errors are one line too
    ({"--crop_size": "16"}, "--crop_size"),
    ({"--decay_type": "sometimes"}, "--decay_type"),
    ({"--device": "tpu"}, "--device"),
    ({"--lowpass": "-2"}, "--lowpass"),
])
def test_train_bad_inputs_give_one_line(data, tmp_path, capsys, argv_patch, needle):
    argv = train_argv(data, tmp_path, "bad")
    for flag, value in argv_patch.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert needle in one_line_error(capsys, train_hypercut.main, argv)
    assert not (tmp_path / "bad" / "training_states").exists()


def test_lowpass_flag_is_trained_and_kept(data, tmp_path):
    run_train(train_argv(data, tmp_path, "low", "--epochs", "1", "--val_epoch", "1", "--lowpass", "1.5"))
    model = load_hypercut(tmp_path / "low" / "models" / "0001.pth")
    assert model.config == {"out_dim": 32, "f_func": "ResnetIm2Vec", "g_func": "Concat", "slope": 1.0,
                            "lowpass": 1.5}
    assert json.loads((tmp_path / "low" / "args.json").read_text())["lowpass"] == 1.5


def test_train_resume_without_state(data, tmp_path, capsys):
    err = one_line_error(capsys, train_hypercut.main, train_argv(data, tmp_path, "none", "--resume"))
    assert "no training state" in err


# --- test_hypercut.py ------------------------------------------------------------------------------

def _independent_figures(model: HyperCUT, root, split="test") -> dict:
    ds = Blur2VidDataset(root, split)
    frames = torch.stack([ds[i]["frames"] for i in range(len(ds))])
    with torch.no_grad():
        _, scores = model.pair_scores(frames)
    return hit_con(scores)


def test_test_hypercut_on_the_reference_state_dict(data, reference_ckpt, hypercut_compact, tmp_path, capsys):
    out = tmp_path / "figures.json"
    assert test_hypercut.main(["--metadata_root", str(data), "--pretrained_path", str(reference_ckpt),
                               "--device", "cpu", "--batch_size", "3", "--output_json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| hit | hit_x2_x6 | hit_x3_x5 | con@2 | con@3 | num_sequences |" in printed
    result = json.loads(out.read_text())

    model = HyperCUT(input_convention=REFERENCE_BGR_IMAGENET)
    model.load_state_dict(hypercut_compact["state_dict"])
    expected = _independent_figures(model.eval(), data)
    assert expected["num_sequences"] == 4
    for key in ("hit", "hit_x2_x6", "hit_x3_x5", "con@2", "con@3", "num_sequences"):
        assert result[key] == pytest.approx(expected[key]), key


def test_test_hypercut_on_our_checkpoint_cli(data, trained, tmp_path):
    """One real command-line call (the script's entry point), on a checkpoint of train_hypercut.py."""
    run_dir, _ = trained
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "test_hypercut.py", "--metadata_root", str(data), "--pretrained_path",
                           str(run_dir / "models" / "0003.pth"), "--device", "cpu", "--split", "val",
                           "--output_json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| hit |" in proc.stdout
    result = json.loads(out.read_text())
    expected = _independent_figures(load_hypercut(run_dir / "models" / "0003.pth"), data, "val")
    assert {k: result[k] for k in expected} == pytest.approx(expected)


def test_test_hypercut_bad_inputs(data, reference_ckpt, tmp_path, capsys):
    base = ["--metadata_root", str(data), "--pretrained_path", str(reference_ckpt), "--device", "cpu"]
    assert "checkpoint not found" in one_line_error(
        capsys, test_hypercut.main, base[:2] + ["--pretrained_path", str(tmp_path / "missing.pth")])
    bogus = tmp_path / "bogus.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, bogus)
    assert "not a HyperCUT checkpoint" in one_line_error(
        capsys, test_hypercut.main, base[:2] + ["--pretrained_path", str(bogus)])
    assert "metadata file not found" in one_line_error(
        capsys, test_hypercut.main, ["--metadata_root", str(tmp_path), *base[2:]])
    assert "--split" in one_line_error(capsys, test_hypercut.main, base + ["--split", "holdout"])
    assert "--pretrained_path" in one_line_error(capsys, test_hypercut.main, base[:2])


# --- generate_order.py -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def brightness_ckpt(tmp_path_factory):
    """A hand-made HyperCUT (our checkpoint format) scoring a pair (a, b) by the mean brightness of a
    minus that of b (in the network's normalised BGR space): exactly antisymmetric, so its decisions
    are easy to predict. Channel 0 of the stem computes a - b at each pixel, the down convs and the
    (zeroed) residual blocks pass it on unchanged, and the hyperplane reads channel 0."""
    model = HyperCUT(out_dim=128, input_convention=REFERENCE_BGR_IMAGENET)
    with torch.no_grad():
        for p in model.f_func.parameters():
            p.zero_()
        stem = model.f_func.model[1]
        stem.weight[0, :3, 3, 3] = 1.0
        stem.weight[0, 3:, 3, 3] = -1.0
        for i in (3, 5, 7, 9, 11):
            model.f_func.model[i].weight[0, 0, 1, 1] = 1.0
        model.hyperplane.hyperplane.zero_()
        model.hyperplane.hyperplane[0] = 1.0
    path = tmp_path_factory.mktemp("toy") / "brightness.pth"
    torch.save({"model": model.state_dict(), **model.checkpoint_fields()}, path)
    return path


@pytest.fixture(scope="module")
def mixed_orders(tmp_path_factory):
    """Stored orders of every kind: generate_order must ignore them."""
    return make_dataset(tmp_path_factory.mktemp("mixed") / "data", counts={"train": 2, "val": 2, "test": 4},
                        orders=("reverse", "random", "keep", "ignore"), seed=1)


def _expected_orders(model, root) -> list:
    """order_decisions on the frames as stored, read directly from the files."""
    meta = json.loads((root / "metadata.json").read_text())
    frames = torch.stack([torch.stack([read_image(root / e[frame_key(k)]) for k in range(1, 8)])
                          for e in meta["data"]])
    with torch.no_grad():
        _, scores = model.pair_scores(frames)
    return ["reverse" if r else "ignore" for r in order_decisions(scores).tolist()]


@pytest.mark.parametrize("ckpt", ["brightness", "reference"])
def test_generate_order(mixed_orders, brightness_ckpt, reference_ckpt, capsys, ckpt):
    ckpt = brightness_ckpt if ckpt == "brightness" else reference_ckpt
    root = mixed_orders
    source = root / "metadata.json"
    before = source.read_bytes()
    out = root / "metadata_ordered.json"
    if out.exists():
        out.unlink()
    argv = ["--metadata_root", str(root), "--pretrained_path", str(ckpt), "--device", "cpu",
            "--batch_size", "3", "--save_path", str(out)]
    assert generate_order.main(argv) == 0
    printed = capsys.readouterr().out
    assert "reversed" in printed and "inconsistent" in printed
    assert source.read_bytes() == before  # the input is untouched

    meta_in, meta_out = json.loads(before), json.loads(out.read_text())
    # decisions: the rule applied to the frames as stored, whatever the stored order was
    expected = _expected_orders(load_hypercut(ckpt), root)
    assert [e["order"] for e in meta_out["data"]] == expected
    if ckpt == brightness_ckpt:  # the stored reverses of val/test sequences get the opposite decision
        assert all(expected[i] != expected[i + 1] for i in (2, 4, 6)), expected
    assert {e["order"] for e in meta_in["data"]} == {"reverse", "random", "keep", "ignore"}
    # everything but `order` preserved: top-level keys and their order, entries, fields and their order
    assert list(meta_out) == list(meta_in)
    assert {k: v for k, v in meta_out.items() if k != "data"} == {k: v for k, v in meta_in.items() if k != "data"}
    assert len(meta_out["data"]) == len(meta_in["data"])
    for a, b in zip(meta_in["data"], meta_out["data"]):
        assert list(a) == list(b)
        assert {k: v for k, v in a.items() if k != "order"} == {k: v for k, v in b.items() if k != "order"}

    # idempotent: run on its own output -> the same file
    again = root / "metadata_again.json"
    if again.exists():
        again.unlink()
    assert generate_order.main(["--metadata_root", str(out), *argv[2:-1], str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    reported = capsys.readouterr().out
    assert f"reversed {expected.count('reverse')} of {len(expected)}" in reported


def test_generate_order_decides_from_stored_frames(brightness_ckpt, tmp_path, capsys):
    """A hand-made model whose score is the brightness of a pair's first frame minus its second: a
    sequence that brightens scores negative on all three pairs (reversed), one that darkens positive
    (kept), a flat one zero (inconsistent, kept); the stored `order` (all `reverse`) plays no part."""
    root = make_dataset(tmp_path / "data", counts={"train": 1, "val": 1, "test": 1}, orders=("reverse",))
    meta = json.loads((root / "metadata.json").read_text())
    for e, ramp in zip(meta["data"], (1, -1, 0)):
        for k in range(1, 8):  # overwrite the frames with flat grey levels
            level = 0.5 + ramp * 0.05 * (k - 4)
            write_png((torch.full((3, SIZE, SIZE), level) * 255).round().to(torch.uint8), str(root / e[frame_key(k)]))
    out = root / "ordered.json"
    assert generate_order.main(["--metadata_root", str(root), "--pretrained_path", str(brightness_ckpt),
                                "--device", "cpu", "--save_path", str(out)]) == 0
    assert [e["order"] for e in json.loads(out.read_text())["data"]] == ["reverse", "ignore", "ignore"]
    assert "reversed 1 of 3 sequences; 1 inconsistent" in capsys.readouterr().out


def test_generate_order_refusals(mixed_orders, reference_ckpt, tmp_path, capsys):
    root = mixed_orders
    source = root / "metadata.json"
    before = source.read_bytes()
    base = ["--metadata_root", str(root), "--pretrained_path", str(reference_ckpt), "--device", "cpu"]
    for target in (source, root):  # the input metadata, named as the file or as the dataset root
        err = one_line_error(capsys, generate_order.main, base + ["--save_path", str(target)])
        assert "input metadata" in err and "--overwrite" in err
    assert source.read_bytes() == before
    existing = root / "existing.json"
    existing.write_text("{}")
    assert "--overwrite" in one_line_error(capsys, generate_order.main, base + ["--save_path", str(existing)])
    assert existing.read_text() == "{}"
    assert "does not exist" in one_line_error(
        capsys, generate_order.main, base + ["--save_path", str(tmp_path / "no_folder" / "x.json")])
    assert "checkpoint not found" in one_line_error(
        capsys, generate_order.main, base[:2] + ["--pretrained_path", str(tmp_path / "no.pth"),
                                                 "--save_path", str(root / "new.json")])
    assert not (root / "new.json").exists()

    # with --overwrite the input itself is replaced, with only the orders changed
    assert generate_order.main(base + ["--save_path", str(source), "--overwrite"]) == 0
    meta_in, meta_out = json.loads(before), json.loads(source.read_text())
    assert [{k: v for k, v in e.items() if k != "order"} for e in meta_out["data"]] == \
           [{k: v for k, v in e.items() if k != "order"} for e in meta_in["data"]]
    assert {e["order"] for e in meta_out["data"]} <= {"reverse", "ignore"}
    source.write_bytes(before)  # leave the module's dataset as it was


def test_generate_order_writes_anywhere(mixed_orders, reference_ckpt, tmp_path):
    """--save_path in another folder: relative image paths are rebased onto the output's folder, so the new
    file loads the very same images; orders are those of a file written inside the dataset root."""
    root = mixed_orders
    base = ["--metadata_root", str(root), "--pretrained_path", str(reference_ckpt), "--device", "cpu"]
    inside, elsewhere = root / "ordered_inside.json", tmp_path / "orders" / "sub" / "generated_metadata.json"
    elsewhere.parent.mkdir(parents=True)
    assert generate_order.main(base + ["--save_path", str(inside)]) == 0
    assert generate_order.main(base + ["--save_path", str(elsewhere)]) == 0
    meta_in, meta_out = json.loads(inside.read_text()), json.loads(elsewhere.read_text())
    assert [e["order"] for e in meta_out["data"]] == [e["order"] for e in meta_in["data"]]
    first_in, first_out = meta_in["data"][0], meta_out["data"][0]
    assert first_out["blur_path"] != first_in["blur_path"] and not Path(first_out["blur_path"]).is_absolute()
    assert {k: v for k, v in first_out.items() if not k.endswith("_path")} == \
           {k: v for k, v in first_in.items() if not k.endswith("_path")}
    for split in ("train", "test"):
        a, b = Blur2VidDataset(inside, split), Blur2VidDataset(elsewhere, split)
        assert [e.blur_path.resolve() for e in a.entries] == [e.blur_path.resolve() for e in b.entries]
        assert torch.equal(a[0]["frames"], b[0]["frames"]) and torch.equal(a[0]["blur"], b[0]["blur"])
    inside.unlink()
