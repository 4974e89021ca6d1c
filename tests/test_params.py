import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import make_bn_cnn, make_mlp
from wfexplore.params import ParameterLayout


def test_default_selection_is_every_conv_and_linear_weight():
    layout = ParameterLayout.from_model(make_bn_cnn())
    assert layout.names == ["0.weight", "4.weight"]
    assert layout.dim == 3 * 1 * 3 * 3 + 4 * 48


def test_custom_module_parameters_are_not_selected_by_default():
    layout = ParameterLayout.from_model(make_mlp())
    assert layout.names == ["0.weight", "3.weight"]


def test_selection_by_module_name_parameter_name_and_regex():
    model = make_mlp()
    assert ParameterLayout.from_model(model, names=["3"]).names == ["3.weight"]
    assert ParameterLayout.from_model(model, names=["2.gain", "0.bias"]).names == [
        "0.bias",
        "2.gain",
    ]
    assert ParameterLayout.from_model(model, pattern=r"bias$").names == ["0.bias", "3.bias"]


def test_one_string_is_one_name_not_its_characters():
    model = make_mlp()
    assert ParameterLayout.from_model(model, names="0.weight").names == ["0.weight"]
    assert ParameterLayout.from_model(model, names="3").names == ["3.weight"]


def test_unknown_name_and_empty_selection_are_refused():
    model = make_mlp()
    with pytest.raises(ValueError, match="names: 'fc9'"):
        ParameterLayout.from_model(model, names=["fc9"])
    with pytest.raises(ValueError, match="selection is empty"):
        ParameterLayout.from_model(model, pattern="nothing-matches")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "rows", True])
def test_bad_block_size_is_refused(bad):
    with pytest.raises(ValueError, match="block_size"):
        ParameterLayout.from_model(make_mlp(), block_size=bad)


def test_blocks_of_b_inside_each_layer_with_a_short_last_block():
    layout = ParameterLayout.from_model(make_mlp(), block_size=8)  # layers of 30 and 15
    sizes = [b.size for b in layout.blocks]
    assert sizes == [8, 8, 8, 6, 8, 7]
    assert [b.layer for b in layout.blocks] == [0, 0, 0, 0, 1, 1]
    assert layout.blocks[4].start == 30
    assert layout.with_block_size("layer").blocks[1].size == 15
    model_block = layout.with_block_size("model").blocks
    assert len(model_block) == 1 and model_block[0].size == 45


def test_flatten_and_unflatten_round_trip_the_parameters():
    model = make_mlp()
    layout = ParameterLayout.from_model(model)
    flat = layout.flatten(model)
    expected = torch.cat([model[0].weight.reshape(-1), model[3].weight.reshape(-1)])
    assert torch.equal(flat, expected)
    back = layout.unflatten(flat)
    assert torch.equal(back["3.weight"], model[3].weight)
    batch = layout.unflatten(torch.stack([flat, 2 * flat]))
    assert torch.equal(batch["0.weight"][1], 2 * model[0].weight)


@given(st.integers(min_value=0, max_value=3 * 9 + 4 * 48 - 1))
def test_locate_and_flat_index_are_inverse(index):
    layout = ParameterLayout.from_model(make_bn_cnn(), block_size=10)
    name, position = layout.locate(index)
    assert layout.flat_index(name, position) == index
    block = layout.block_of(index)
    assert block.start <= index < block.stop


def test_locate_agrees_with_the_tensor_layout():
    model = make_bn_cnn()
    layout = ParameterLayout.from_model(model)
    flat = layout.flatten(model)
    name, position = layout.locate(50)
    assert name == "4.weight"
    assert flat[50] == dict(model.named_parameters())[name][position]


def test_table_shows_each_analysed_parameter():
    table = ParameterLayout.from_model(make_bn_cnn(), block_size=100).table()
    assert list(table["parameter"]) == ["0.weight", "4.weight"]
    assert list(table["module"]) == ["Conv2d", "Linear"]
    assert list(table["numel"]) == [27, 192]
    assert list(table["blocks"]) == [1, 2]
