"""The registries (utils/registry.py): one line for an unknown name, no name twice, every command-line choice
list equal to its registry's names; each loss type serves the frames loss and the multi-scale loss alike."""
import importlib

import pytest
import torch

from _cli import LAB_SCRIPTS, SCRIPTS
from losses import LOSSES, PurohitLoss, SequenceLoss, build_frames_loss
from losses.pit import pit_terms
from models import BACKBONES, build_backbone
from models.backbones.purohit import pyramid
from models.hypercut import F_FUNCS, G_FUNCS, HyperCUT
from recipes import RECIPES, recipe
from utils.errors import UnknownNameError, UserError
from utils.registry import Registry

REGISTRY_OF_FLAG = {"--backbone": BACKBONES, "--loss_type": LOSSES, "--f_func": F_FUNCS, "--g_func": G_FUNCS}


def test_lookup_names_and_the_one_line_error():
    shapes = Registry("shape")
    shapes.register("square")(str)
    shapes.register("circle")(int)
    assert shapes["square"] is str and "circle" in shapes and "oval" not in shapes
    assert shapes.names() == ["circle", "square"]
    with pytest.raises(UnknownNameError) as info:
        shapes["oval"]
    assert str(info.value) == "unknown shape 'oval'; choose from circle, square"
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_a_name_registered_twice_is_refused():
    shapes = Registry("shape")
    shapes.register("square")(str)
    with pytest.raises(ValueError, match="shape 'square' is registered twice"):
        shapes.register("square")(int)
    assert shapes["square"] is str
    with pytest.raises(ValueError, match="f_func 'ResnetIm2Vec' is registered twice"):
        F_FUNCS.register("ResnetIm2Vec")(object)
    with pytest.raises(ValueError, match="loss type 'naive' is registered twice"):
        LOSSES.register("naive")(object)


def test_entries_with_options():
    plain = Registry("shape")
    with pytest.raises(TypeError, match="no options"):
        plain.register("square", sides=4)
    shapes = Registry("shape", entry=lambda name, obj, sides: (name, obj, sides))
    assert shapes.register("square", sides=4)(str) is str  # the decorated object is returned unchanged
    assert shapes["square"] == ("square", str, 4)
    assert BACKBONES["Purohit"].config_keys == ("width_mult", "center_width_mult", "feed_back_flow")
    assert BACKBONES["Jin"].load_official is not None and BACKBONES["JinCenter"].load_official is None


def test_the_registries_hold_every_definition():
    assert BACKBONES.names() == ["Jin", "JinCenter", "Purohit"]
    assert F_FUNCS.names() == ["CorrIm2Vec", "FlowIm2Vec", "MotionIm2Vec", "ResnetIm2Vec"]
    assert G_FUNCS.names() == ["Concat"]
    assert LOSSES.names() == ["hypercut", "naive", "order_inv", "pit"]
    assert all(issubclass(cls, SequenceLoss) for _, cls in LOSSES.items())


def test_unknown_names_name_the_choices():
    with pytest.raises(UnknownNameError, match=r"^unknown backbone 'Nope'; choose from Jin, JinCenter, Purohit$"):
        build_backbone("Nope")
    with pytest.raises(UnknownNameError, match=r"^unknown f_func 'Nope'; choose from CorrIm2Vec, FlowIm2Vec, "):
        HyperCUT(f_func="Nope")
    with pytest.raises(UnknownNameError, match=r"^unknown g_func 'Nope'; choose from Concat$"):
        HyperCUT(g_func="Nope")
    for build in (build_frames_loss, PurohitLoss):
        with pytest.raises(UnknownNameError, match=r"^unknown loss type 'l2'; choose from hypercut, naive, order_inv, pit$"):
            build("l2")


def test_every_command_line_choice_list_is_its_registry():
    found = set()
    for name in SCRIPTS + LAB_SCRIPTS:
        for action in importlib.import_module(name).build_parser()._actions:
            for flag in set(action.option_strings) & set(REGISTRY_OF_FLAG):
                assert list(action.choices) == REGISTRY_OF_FLAG[flag].names(), (name, flag)
                found.add((name, flag))
    assert found == {("train_blur2vid", "--backbone"), ("train_blur2vid", "--loss_type"),
                     ("test_blur2vid", "--backbone"), ("test_blur2vid", "--loss_type"), ("inference", "--backbone"),
                     ("train_hypercut", "--f_func"), ("train_hypercut", "--g_func"), ("generate_order", "--f_func"),
                     ("generate_order", "--g_func"), ("test_hypercut", "--f_func"), ("test_hypercut", "--g_func")}


def _single_scale(frames):
    return {"frames": frames, "scales": [frames], "flows": [torch.zeros(frames.shape[:2] + (2, 4, 4))]}


@pytest.mark.parametrize("loss_type", ["naive", "order_inv", "pit", "hypercut"])
def test_one_scale_of_the_multiscale_loss_is_the_frames_loss(loss_type):
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 7, 3, 40, 40, generator=gen)
    pred = torch.stack([gt[0] + 0.05, gt[1].flip(0), torch.rand(7, 3, 40, 40, generator=gen)])
    torch.manual_seed(0)
    hypercut = HyperCUT(out_dim=16, slope=0.2)
    frames_total, frames_terms = build_frames_loss(loss_type, hypercut=hypercut, alpha=0.2)(pred, gt)
    total, terms = PurohitLoss(loss_type, hypercut=hypercut, alpha=0.2, mu=0.0)(_single_scale(pred), gt)
    assert total.item() == pytest.approx(frames_total.item(), rel=1e-5)
    assert ("flipped" in terms) == (loss_type in ("pit", "hypercut"))
    if "flipped" in terms:
        assert terms["flipped"].item() == frames_terms["flipped"].item()


def test_multiscale_pit_orders_every_scale_by_the_finest():
    gen = torch.Generator().manual_seed(1)
    gt = torch.rand(2, 7, 3, 16, 16, generator=gen)
    scales = [y + 0.01 for y in pyramid(torch.stack([gt[0], gt[1].flip(0)]))]
    out = {"frames": scales[0], "scales": scales, "flows": [torch.zeros(2, 6, 2, 4, 4)]}
    _, flipped = pit_terms(out["frames"], gt)
    assert flipped.tolist() == [False, True]
    target = torch.where(flipped[:, None, None, None, None], gt.flip(1), gt)
    photo = sum(torch.sqrt((p - y) ** 2 + 1e-6).mean() for p, y in zip(scales, pyramid(target))) / 4
    _, terms = PurohitLoss("pit", mu=0.0)(out, gt)
    assert terms["photo"].item() == pytest.approx(photo.item(), rel=1e-6) and terms["flipped"].item() == 1


def test_recipes_are_copied_and_changed_in_place():
    flags = recipe("hypercut_ext", batch_size=4)
    assert flags == ["--f_func", "FlowIm2Vec", "--crop_consistency", "2.0", "--batch_size", "4", "--lr", "1e-3"]
    flags.append("--epochs")
    assert recipe("hypercut_ext") == list(RECIPES["hypercut_ext"])  # the table is unchanged
    assert recipe("hypercut_paper_lab")[:4] == recipe("hypercut_paper")
    with pytest.raises(KeyError, match="no --epochs"):
        recipe("jin_demo", epochs=3)
